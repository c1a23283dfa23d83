"""Several processes under ``torchrun``: joining the process group, the device of each rank, global batches and
their per-rank shares, sums reduced over ranks, and setup errors agreed on by every rank.

Launch any training command as ``torchrun --nproc_per_node N -m egnn.experiments.cli ...`` (one node),
``torchrun --nnodes M --node_rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...`` (several nodes) or
``srun torchrun ...`` (SLURM). The backend is gloo on CPU, nccl for CUDA tensors. Every collective has a timeout
(``EGNN_DIST_TIMEOUT`` seconds, default 600), so a rank that stops never leaves the others waiting for ever.

Outside ``torchrun`` (``WORLD_SIZE`` unset) every function here is the single-process identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from egnn.experiments.training.task import LossTerms
from egnn.ops.batch import budget_starts

T = TypeVar("T")


class PeerFailure(RuntimeError):
    """Another rank failed (it reports the cause itself); this rank stops quietly with the same exit code."""


class RankError(RuntimeError):
    """A collective failed because another rank stopped or cannot be reached."""


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return dist_info()[1] > 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK``) when CUDA is present, else the CPU."""
    if name == "auto":
        if dist_info()[1] > 1 and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("EGNN_DIST_TIMEOUT", 600)))


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA); idempotent."""
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # with CUDA: nccl for CUDA tensors (gradients, metrics), gloo for the few CPU ones (setup agreement)
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout())
    return rank, world


def _collective(fn: Callable[[], T]) -> T:
    """Run a collective; a peer that died or timed out becomes :class:`RankError` (one line, not a traceback)."""
    try:
        return fn()
    except (RuntimeError, OSError) as err:  # gloo/nccl report a lost peer as DistBackendError (a RuntimeError)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RankError(f"rank {dist_info()[0]}: another rank stopped or did not answer in time ({first})") from None


# what gloo and nccl say when a peer process is gone (in errors that reach us as plain RuntimeErrors, e.g. from
# DDP's gradient all-reduce inside ``loss.backward()``)
_PEER_LOST = ("connection reset by peer", "connection closed by peer", "broken pipe", "gloo", "nccl",
              "socket timeout", "timed out")


def peer_lost(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank stopped or cannot be reached."""
    if isinstance(err, torch.distributed.DistError):
        return True
    text = str(err).lower()
    return any(s in text for s in _PEER_LOST)


def reduce_device(device: torch.device) -> torch.device:
    """Where this rank's tensors must be for a collective: nccl reduces CUDA tensors, gloo CPU tensors."""
    return device if device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum of ``values`` over the ranks (a copy; the input itself when there is one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    out = values.clone()
    _collective(lambda: torch.distributed.all_reduce(out))
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return obj
    box = [obj]
    _collective(lambda: torch.distributed.broadcast_object_list(box, src=src))
    return box[0]


def on_rank0(fn: Callable[[], T], user_errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result; if it raises, rank 0 re-raises the error and the
    others stop with :class:`PeerFailure` (so the cause is printed once, by rank 0)."""
    rank, world = init_distributed()
    if world == 1:
        return fn()
    outcome: tuple[bool, object] = (True, None)
    if rank == 0:
        try:
            outcome = (True, fn())
        except user_errors as err:
            outcome = (False, err)
    outcome = broadcast_object(outcome)
    ok, value = outcome
    if ok:
        return value  # type: ignore[return-value]
    if rank == 0:
        raise value  # type: ignore[misc]
    raise PeerFailure("rank 0 failed")


def agree(fn: Callable[[], T], user_errors: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Run ``fn`` on every rank; if any rank raises, the lowest such rank re-raises its error and the others stop
    with :class:`PeerFailure` (a bad input file, seen by every rank, is reported once)."""
    rank, world = init_distributed()
    if world == 1:
        return fn()
    error: BaseException | None = None
    value: T | None = None
    try:
        value = fn()
    except user_errors as err:
        error = err
    flags = all_reduce_sum(torch.zeros(world, dtype=torch.int64).index_fill_(0, torch.tensor([rank]),
                                                                             int(error is not None)))
    failed = [r for r in range(world) if int(flags[r])]
    if not failed:
        return value  # type: ignore[return-value]
    if rank == failed[0]:
        assert error is not None
        raise error
    raise PeerFailure(f"rank {failed[0]} failed")


def global_loss(terms: LossTerms, share: int, world: int, where: torch.device) -> tuple[Tensor, float]:
    """This rank's part of a loss over the global batch, and the global loss's value (for the log).

    Each term's count is summed over the ranks, so each rank's loss is its share of the global mean; it is
    multiplied by ``world`` because DDP averages the gradients. A rank with no sample in a short last batch
    (``share == 0``) has computed one to keep DDP's collectives in step, and weighs it zero.
    """
    if share == 0:
        terms = LossTerms(terms.weights, [s * 0.0 for s in terms.sums], [0.0] * len(terms.counts))
    counts = all_reduce_sum(torch.tensor(terms.counts, dtype=torch.float64, device=where))
    loss = sum(w * s / counts[k].clamp_min(1e-300).to(s.dtype)
               for k, (w, s) in enumerate(zip(terms.weights, terms.sums)))
    value = float(all_reduce_sum(loss.detach().to(where, torch.float64).reshape(1)))
    return loss * world, value


# ------------------------------------------------------------------------------------------- global batches


def epoch_order(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The training order of an epoch: depends only on ``(seed, epoch)``, so resume is exact."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=gen)


def global_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """Consecutive global batches of ``order`` (the last may be shorter): the same for any number of ranks."""
    return [order[s : s + batch_size] for s in range(0, order.numel(), batch_size)]


def rank_share(batch: Tensor, rank: int, world: int) -> Tensor:
    """This rank's samples of a global batch: every ``world``-th, so the shares' union is the batch."""
    return batch if world == 1 else batch[rank::world]


def shard_batches(order: Tensor, batch_size: int, rank: int, world: int) -> list[Tensor]:
    """This rank's share of every global batch of ``order`` (may be empty in a tail shorter than ``world``)."""
    return [rank_share(b, rank, world) for b in global_batches(order, batch_size)]


def eval_batches(num_samples: int, batch_size: int, rank: int, world: int,
                 sizes: Sequence[int] | np.ndarray | None = None, budget: int | None = None) -> Iterator[Tensor]:
    """Contiguous evaluation batches of a split, dealt round-robin to the ranks (together: the whole split): of
    ``batch_size`` samples, or (with per-sample ``sizes`` and a ``budget``) of at most ``budget`` in size, so that
    memory does not grow with the size of the samples."""
    if sizes is None or budget is None:
        starts: Sequence[int] = range(0, num_samples, batch_size)
    else:
        starts = budget_starts(sizes, batch_size, budget)
    ends = [*starts[1:], num_samples]
    for start, end in list(zip(starts, ends))[rank::world]:
        yield torch.arange(start, end)
