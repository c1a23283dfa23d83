"""The metric of a task over a whole split: each rank evaluates its round-robin share of the batches and the sums
are reduced over the ranks, so every rank gets the metric of the whole split (never rank 0's share alone)."""

from __future__ import annotations

import torch
from torch import nn

from egnn.experiments.training.distributed import all_reduce_sum, dist_info, eval_batches, reduce_device
from egnn.experiments.training.task import DataSplit, Task, iter_batches


def evaluate_split(
    task: Task, split: DataSplit, model: nn.Module, device: torch.device, batch_size: int = 500,
    progress: bool = False, desc: str = "eval", budget: int | None = None,
) -> float:
    """Mean of ``task.metric`` over a split, in eval mode (under ``torch.inference_mode`` unless the metric
    needs gradients), with an optional progress bar over this rank's batches. Batches hold at most
    ``batch_size`` samples and, when the split gives per-sample sizes (``split.sizes()``, e.g. atoms + edges of
    each frame), at most ``budget`` in size. Under ``torchrun`` every rank must call it (the sums are reduced over
    the ranks)."""
    from tqdm.auto import tqdm

    rank, world = dist_info()
    was_training = model.training
    model.eval()
    wrapped = task.wrap(model) if task.wrap is not None else model
    sizes = split.sizes() if budget is not None and hasattr(split, "sizes") else None
    batches = list(eval_batches(len(split), batch_size, rank, world, sizes, budget))
    sums = torch.zeros(2, dtype=torch.float64)  # metric sum, sample count (float64: exact counts)
    context = torch.enable_grad if task.metric_needs_grad else torch.inference_mode
    with context(), tqdm(total=len(batches), desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                         disable=not progress or len(batches) < 2) as bar:
        for batch in iter_batches(split, batches, device):
            s, c = task.metric(wrapped, batch)
            sums[0] += float(s)
            sums[1] += c
            bar.update(1)
    model.train(was_training)
    if world > 1:
        sums = all_reduce_sum(sums.to(reduce_device(device))).cpu()
    return float(sums[0] / sums[1].clamp_min(1))
