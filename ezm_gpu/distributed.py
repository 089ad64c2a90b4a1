"""Data-parallel learning across processes (``torchrun``): the world a process is part of, and what keeps every
rank's model identical to the one a single process would train on the union of the ranks' batches.

A rank samples its own batch from its own replay shard; the learner then makes one update from all ranks'
batches, as a single process would from their union:

- gradients are averaged across ranks (one all-reduce of one flat buffer). The loss is a batch mean, so with
  equal batches per rank the average is the gradient of the union's mean loss;
- BatchNorm in training mode normalises with the statistics of the union (``GlobalBatchNorm1d``: the sums are
  all-reduced, through autograd), and its running statistics are the union's, hence the same on every rank;
- the observation normaliser merges the union's observations (all-gathered).

Weights, Adam's state, BatchNorm's buffers and so the EMA copy stay identical on every rank (the model starts
from the same seed everywhere). Backend: NCCL on CUDA, gloo on CPU (torch.distributed; nothing home-made).
A plain process is a world of one: nothing here communicates then.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["World", "init_world", "average_gradients", "all_gather_rows", "reduce_", "broadcast_object", "barrier",
           "GlobalBatchNorm1d", "global_batch_norm", "COLLECTIVE_TIMEOUT", "RANK_SEED_STRIDE"]

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)  # a rank that stops answering ends the others' collectives
RANK_SEED_STRIDE = 1_000_003  # rank r seeds its worlds and draws with seed + r x this (rank 0: the plain seed)


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its node (torchrun's
    RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if not (isinstance(self.size, int) and self.size >= 1 and 0 <= self.rank < self.size
                and isinstance(self.local_rank, int) and self.local_rank >= 0):
            raise ValueError(f"invalid world: rank {self.rank!r} of {self.size!r} (local rank {self.local_rank!r})")

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes the run's shared files."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Optional[dict] = None) -> "World":
        """The world torchrun describes in the environment; a world of one without it."""
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return cls()
        try:
            return cls(rank=int(environ["RANK"]), size=int(environ["WORLD_SIZE"]),
                       local_rank=int(environ.get("LOCAL_RANK", environ["RANK"])))
        except (KeyError, ValueError) as error:
            raise ValueError(f"torchrun's RANK, WORLD_SIZE and LOCAL_RANK are incomplete or not integers ({error})")


def init_world(world: World, device: torch.device) -> None:
    """Joins the process group of ``world`` (NCCL on CUDA, gloo on CPU) unless it is a world of one or joined."""
    if world.size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if device.type == "cuda":  # NCCL's object collectives (broadcast_object_list) use the current device
        torch.cuda.set_device(device)
        kwargs = {"device_id": device}
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT, **kwargs)


def average_gradients(parameters: Iterable[nn.Parameter], world: World) -> None:
    """Every parameter's ``.grad`` replaced by its mean over the ranks: one all-reduce of one flat buffer (the
    same order of additions on every rank, so every rank gets the same bits). Parameters without a gradient are
    left out (the same ones on every rank: the ranks run the same code)."""
    if world.size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def reduce_(x: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """``x`` reduced over the ranks in place ("sum", "max" or "min"); returns it (unchanged in a world of one)."""
    if world.size > 1:
        dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return x


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Waits until every rank is here (nothing in a world of one)."""
    if world.size > 1:
        dist.barrier()


def all_gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """[B, ...] of this rank -> [size * B, ...]: every rank's rows, rank 0's first (the same B on every rank)."""
    if world.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world.size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _SumOverRanks(torch.autograd.Function):
    """y = the sum over ranks of x; its gradient is the sum over ranks of y's (every rank's loss depends on every
    rank's x through y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training-mode statistics are those of every rank's batch together ([B, C] inputs of
    the same B on every rank): the per-channel sums are all-reduced through autograd, so gradients flow to every
    rank's inputs as in one process's BatchNorm over the union. Eval mode is BatchNorm1d's (running statistics).

    (torch's SyncBatchNorm runs on CUDA only; this one runs wherever the process group does, gloo included.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        count = x.shape[0] * dist.get_world_size()
        sums = _SumOverRanks.apply(torch.cat([x.sum(0), x.square().sum(0)]))  # [2C]: sum, sum of squares
        mean, mean_square = (sums / count).chunk(2)
        var = (mean_square - mean.square()).clamp_min(0.0)  # biased: what normalises, as BatchNorm1d
        with torch.no_grad():  # running statistics of the union (momentum update, unbiased variance)
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * (count / (count - 1)), momentum)
        out = (x - mean) / torch.sqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d`` turned into a ``GlobalBatchNorm1d`` in place (the same parameter and
    buffer tensors: an optimiser made before still holds them); returns ``module``."""
    for child in module.modules():
        if type(child) is nn.BatchNorm1d:
            child.__class__ = GlobalBatchNorm1d  # a subclass adding no state: the module keeps its tensors
    return module
