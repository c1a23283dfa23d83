"""The training layer every experiment uses, one module per job:

- :mod:`.task`: what an experiment supplies (:class:`Task`: splits, loss, metric; the data seam) and the
  optimisation settings (:class:`TrainConfig`);
- :mod:`.loop`: the :class:`Trainer` (steps, schedule, weight averaging, DDP);
- :mod:`.evaluation`: a metric over a whole split, reduced over the ranks;
- :mod:`.state`: checkpoints, exact resume and the CSV log (rank 0 writes);
- :mod:`.distributed`: ``torchrun`` process groups, global batches and their per-rank shares.
"""

from egnn.experiments.training.distributed import (
    PeerFailure,
    RankError,
    dist_info,
    epoch_order,
    global_batches,
    init_distributed,
    resolve_device,
    shard_batches,
)
from egnn.experiments.training.evaluation import evaluate_split
from egnn.experiments.training.loop import Trainer
from egnn.experiments.training.task import (
    RESUME_FREE,
    DataSplit,
    FitResult,
    LossTerms,
    Task,
    TrainConfig,
    iter_batches,
)

__all__ = [
    "RESUME_FREE", "DataSplit", "FitResult", "LossTerms", "PeerFailure", "RankError", "Task", "TrainConfig",
    "Trainer", "dist_info", "epoch_order", "evaluate_split", "global_batches", "init_distributed", "iter_batches",
    "resolve_device", "shard_batches",
]
