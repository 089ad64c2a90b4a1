"""The "inductor" backend: the torch reference with its per-simulation walks compiled by torch.compile.

Selection and backup are the two operations that run every simulation; compiled (Inductor: fused C++
loops on CPU, Triton on CUDA) they launch a few kernels instead of dozens of small ops per tree
level, which is what eager torch pays on a CPU. Each is specialised on the schedule's integers
(survivor count, descent bound), a handful of variants per (N, m): the first search of a shape
compiles them (tens of seconds on a CPU, cached on disk by Inductor), later searches reuse them.
The results are those of the reference (the tests check equality).
"""
from __future__ import annotations

import torch

from . import discrete, reference
from .config import SearchConfig
from .tree import Selection, Tree

__all__ = ["select", "backup", "sequential_halving", "select_discrete", "backup_discrete"]

_select_walk = torch.compile(reference.select_walk, dynamic=False)
_backup_path = torch.compile(reference.backup_path, dynamic=False)
sequential_halving = reference.sequential_halving  # runs 3-4 times per search: not worth compiling


def select(tree: Tree, config: SearchConfig, simulation: int) -> Selection:
    """Compiled ``reference.select``."""
    schedule = config.schedule(tree.num_root_actions)
    return _select_walk(tree, config, schedule.survivors[simulation], schedule.max_descents[simulation])


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor) -> None:
    """Compiled ``reference.backup``."""
    leaf = torch.full((tree.batch_size, 1), simulation + 1, dtype=torch.int64, device=leaf_value.device)
    _backup_path(tree, config, leaf, config.schedule(tree.num_root_actions).max_descents[simulation] + 2, leaf_value)


# The discrete (mctx) search: one selection step compiled (two variants: the root and below it); the walk
# over steps stays in Python, so it stops when every tree is done. Backup is a few [B] ops per step.
_descend = torch.compile(discrete.descend, dynamic=False)
backup_discrete = discrete.backup_discrete


def select_discrete(tree: Tree, config, simulation: int) -> Selection:
    """Compiled ``discrete.select_discrete``."""
    return discrete.select_discrete(tree, config, simulation, level=_descend)
