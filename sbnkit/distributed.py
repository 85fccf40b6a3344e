"""Data-parallel training over several processes (``torchrun``).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process holds the whole model
and takes its own contiguous slice of each global batch of ``train.batch_size`` examples (the
data order is the same on every rank). After each backward pass the gradients are averaged over
the processes with one flattened ``all_reduce`` per dtype, which is what
``DistributedDataParallel`` does; sbnkit does it itself because path estimators walk the model's
stages instead of calling its ``forward``, which the DDP wrapper needs to see. So every estimator
works unchanged, and with equal slices the averaged gradient is the gradient of the global
batch's mean loss, as in one process.

Noise (units, and Bernoulli weights sampled in the forward pass) comes from each rank's own
stream (seeded ``seed + rank``): the ranks' estimates are independent, and their average is an
estimate of the global batch's gradient with ``world_size`` times fewer noise draws per example
shared. BayesBiNN's relaxed weight samples are the exception: its update uses the sample, so they
come from one stream that every rank holds alike
(:func:`~sbnkit.optim.bayesbinn.share_sample_generator`). BatchNorm (``train.batch_norm``)
normalises each rank's slice with its own statistics (``local``, the default), or with the
statistics of the whole global batch (``sync``:
``torch.nn.SyncBatchNorm``, which torch implements for CUDA only; with one process ``sync`` is
``local``). Only rank 0 writes the run folder and prints; every rank checks its input before
anything is written. A checkpoint gathers every rank's random streams and buffers to rank 0
(:func:`gather`), so each rank resumes its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

__all__ = [
    "BATCH_NORMS",
    "BatchNormMode",
    "Cluster",
    "agree",
    "all_reduce_gradients",
    "check_batch_norm",
    "gather",
    "join",
    "leave",
    "use_batch_norm",
]

BatchNormMode = Literal["local", "sync"]
BATCH_NORMS: tuple[str, ...] = get_args(BatchNormMode)


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch ``t`` (equal slices)."""
        if self.world_size == 1:
            return t
        n = t.shape[0] // self.world_size
        return t[self.rank * n : (self.rank + 1) * n]


def join(device_type: str) -> Cluster:
    """The cluster of this process: one process, or the ``torchrun`` group it belongs to
    (joined with gloo on the CPU, nccl on CUDA).

    Raises :class:`~sbnkit.errors.UserError` for a malformed ``torchrun`` environment.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers; start several processes with "
            "torchrun"
        ) from None
    if world == 1:
        return Cluster()
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); start with torchrun")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Cluster(rank, world, local)


def check_batch_norm(mode: BatchNormMode, cluster: Cluster, device: torch.device) -> None:
    """Raise :class:`~sbnkit.errors.UserError` when BatchNorm ``mode`` cannot run here:
    ``sync`` with several processes off CUDA (torch's SyncBatchNorm needs CUDA and nccl)."""
    if mode == "sync" and cluster.world_size > 1 and device.type != "cuda":
        raise UserError(
            f'train.batch_norm = "sync" needs CUDA (nccl): torch\'s SyncBatchNorm does not run '
            f'on {device.type} (gloo); use train.batch_norm = "local" or train.device = "cuda"'
        )


def use_batch_norm(
    model: nn.Module, mode: BatchNormMode, cluster: Cluster, device: torch.device
) -> nn.Module:
    """``model`` with the BatchNorm of ``mode``: unchanged for ``local`` or one process, else
    every BatchNorm layer converted to :class:`torch.nn.SyncBatchNorm` (same parameters and
    state-dict keys, so its checkpoints load into the plain model).

    Raises :class:`~sbnkit.errors.UserError` as :func:`check_batch_norm` does.
    """
    check_batch_norm(mode, cluster, device)
    if mode == "local" or cluster.world_size == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def gather(obj: Any, cluster: Cluster) -> list[Any] | None:
    """Every rank's ``obj`` (tensors and plain data) in rank order on rank 0, ``None`` on the
    others; ``[obj]`` with one process. All ranks must call it together.

    Raises ``RuntimeError`` (from :mod:`torch.distributed`) when a process left the group."""
    if cluster.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * cluster.world_size if cluster.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def leave(cluster: Cluster) -> None:
    """Leave the process group of ``cluster`` (nothing for one process)."""
    if cluster.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average the ``.grad`` of ``params`` over the processes (missing gradients count as 0).

    Raises ``RuntimeError`` (from :mod:`torch.distributed`) when a process left the group."""
    if world_size == 1:
        return
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def agree(loss: float, stop: bool, cluster: Cluster, device: torch.device) -> tuple[float, bool]:
    """``(mean loss over the processes, whether any process was asked to stop)``: one
    ``all_reduce`` per step, so every rank logs the same loss and stops at the same step.

    Raises ``RuntimeError`` (from :mod:`torch.distributed`) when a process left the group."""
    if cluster.world_size == 1:
        return loss, stop
    t = torch.tensor([loss, float(stop)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0]) / cluster.world_size, bool(t[1] > 0)
