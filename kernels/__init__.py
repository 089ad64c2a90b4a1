"""Batched tree search for thousands of trees on device (`ezm_gpu.kernels`): EZ-M's sampled Gumbel search
for continuous actions, and mctx's MuZero and Gumbel MuZero policies for discrete actions, on one tree.

Public API:
  - mctx's discrete policies, same names as mctx: ``muzero_policy``, ``gumbel_muzero_policy`` with
    ``RootFnOutput``, ``RecurrentFnOutput``, ``PolicyOutput`` and the qtransforms
    (``qtransform_by_min_max``, ``qtransform_by_parent_and_siblings``, ``qtransform_completed_by_mix_value``);
    ``PolicyOutput.search_tree`` is a ``Tree`` with mctx's views and ``summary()`` (a ``SearchSummary``).
  - EZ-M's search: ``sampled_gumbel_search`` given a ``recurrent_fn`` returning a ``SampledRecurrentFnOutput``;
    returns a ``SearchOutput``. ``SearchConfig``: its hyper-parameters (EZ-M defaults), validated.
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
from .policies import PolicyOutput, RecurrentFnOutput, RootFnOutput, gumbel_muzero_policy, muzero_policy
from .qtransforms import qtransform_by_min_max, qtransform_by_parent_and_siblings, qtransform_completed_by_mix_value
from .search import (SampledRecurrentFn, SampledRecurrentFnOutput, SearchOutput, backup, root_outputs,
                     sampled_gumbel_search, select, sequential_halving)
from .tree import SearchSummary, Selection, Tree, expand, init_tree

__all__ = [
    # mctx's discrete policies
    "RootFnOutput",
    "RecurrentFnOutput",
    "PolicyOutput",
    "muzero_policy",
    "gumbel_muzero_policy",
    "qtransform_by_min_max",
    "qtransform_by_parent_and_siblings",
    "qtransform_completed_by_mix_value",
    "SearchSummary",
    # EZ-M's sampled search
    "SearchConfig",
    "SearchOutput",
    "SampledRecurrentFn",
    "SampledRecurrentFnOutput",
    "sampled_gumbel_search",
    # the shared tree and the operations of the sampled search
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
