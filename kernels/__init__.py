"""Batched sampled Gumbel tree search (EZ-M) for thousands of trees on device (`ezm_gpu.kernels`).

Public API:
  - ``sampled_gumbel_search``: the whole search, given a ``recurrent_fn`` (returning a
    ``RecurrentFnOutput``); returns a ``SearchOutput``.
  - ``SearchConfig``: its hyper-parameters (EZ-M defaults), validated.
  - The operations it composes, for custom drivers: ``init_tree``, ``select``, ``expand``, ``backup``,
    ``sequential_halving``, ``root_outputs`` and the ``Tree`` / ``Selection`` storage they act on;
    ``halving_schedule`` gives the static sequential-halving schedule.

Every operation has a pure-torch reference (any device, the CPU path) and, for selection, backup and
halving, a Triton kernel used automatically for CUDA tensors; pass ``backend="torch"|"triton"`` to
choose. ``kernels.agreement`` defines when a backend agrees with the reference (integer outputs
identical except after a float32 near-tie: compiled Triton rounds differently). This package depends on
torch and triton only and never imports ezm_gpu's algorithm modules.
"""
from .config import HalvingSchedule, SearchConfig, halving_schedule
from .search import (RecurrentFn, RecurrentFnOutput, SearchOutput, backup, root_outputs, sampled_gumbel_search,
                     select, sequential_halving)
from .tree import Selection, Tree, expand, init_tree

__all__ = [
    "SearchConfig",
    "SearchOutput",
    "RecurrentFn",
    "RecurrentFnOutput",
    "sampled_gumbel_search",
    "Tree",
    "Selection",
    "init_tree",
    "select",
    "expand",
    "backup",
    "sequential_halving",
    "root_outputs",
    "HalvingSchedule",
    "halving_schedule",
]
