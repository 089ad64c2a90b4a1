"""mctx's Q-transforms: how a node's children's Q-values become the value term of action selection.

Each is ``qtransform(tree, node) -> [B, A] float32`` for ``node`` [B] int64 (one node per tree), the batched
form of mctx's ``qtransform(tree, node_index)``, evaluated in the order mctx writes it (float32). Pass
parameters with ``functools.partial``, as in mctx. The Triton kernels recognise these three functions
(bare or partial) and evaluate them in-kernel; any other callable runs on the torch path.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from .tree import Tree

__all__ = ["qtransform_by_min_max", "qtransform_by_parent_and_siblings", "qtransform_completed_by_mix_value",
           "known_qtransform", "apply_qtransform"]

_TINY = torch.finfo(torch.float32).tiny


def known_qtransform(qtransform) -> Optional[tuple[Callable, dict]]:
    """(function, keyword arguments) when ``qtransform`` is one of this module's three, bare or a
    ``functools.partial`` of one with keyword arguments only; None otherwise (a custom qtransform)."""
    function, keywords = qtransform, {}
    if isinstance(function, functools.partial):
        if function.args:
            return None
        function, keywords = function.func, dict(function.keywords)
    return (function, keywords) if function in _IMPLEMENTATIONS else None


def apply_qtransform(qtransform, tree: Tree, node: torch.Tensor,
                     statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``qtransform(tree, node)`` given the node's ``Tree.children_statistics`` already gathered (the
    selection has them): this module's qtransforms reuse them, a custom one is called as it is."""
    known = known_qtransform(qtransform)
    if known is None:
        return qtransform(tree, node)
    function, keywords = known
    return _IMPLEMENTATIONS[function](tree, node, statistics, **keywords)


def _node_stat(stat: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    return stat.gather(1, node[:, None])[:, 0]


def qtransform_by_min_max(tree: Tree, node: torch.Tensor, *, min_value: float, max_value: float) -> torch.Tensor:
    """Q-values rescaled from [min_value, max_value] to [0, 1]; unvisited actions get min_value (so 0).

    Returns [B, A] float32 for node [B] int64.
    """
    return _by_min_max(tree, node, tree.children_statistics(node), min_value=min_value, max_value=max_value)


def _by_min_max(tree, node, statistics, *, min_value, max_value):
    _, qvalues, visits = statistics
    value_score = torch.where(visits > 0, qvalues, min_value)
    return (value_score - min_value) / (max_value - min_value)


def qtransform_by_parent_and_siblings(tree: Tree, node: torch.Tensor, *, epsilon: float = 1e-8) -> torch.Tensor:
    """Q-values normalised by the min and max over the node's value and its visited children's Q-values;
    unvisited actions get the minimum (so 0). Returns [B, A] float32 for node [B] int64."""
    return _by_parent_and_siblings(tree, node, tree.children_statistics(node), epsilon=epsilon)


def _by_parent_and_siblings(tree, node, statistics, *, epsilon=1e-8):
    _, qvalues, visits = statistics
    node_value = _node_stat(tree.node_values, node)[:, None]
    visited = visits > 0
    safe_qvalues = torch.where(visited, qvalues, node_value)
    min_value = torch.minimum(node_value, safe_qvalues.amin(-1, keepdim=True))
    max_value = torch.maximum(node_value, safe_qvalues.amax(-1, keepdim=True))
    completed_by_min = torch.where(visited, qvalues, min_value)
    return (completed_by_min - min_value) / torch.clamp(max_value - min_value, min=epsilon)


def qtransform_completed_by_mix_value(tree: Tree, node: torch.Tensor, *, value_scale: float = 0.1,
                                      maxvisit_init: float = 50.0, rescale_values: bool = True,
                                      use_mixed_value: bool = True, epsilon: float = 1e-8) -> torch.Tensor:
    """Gumbel MuZero's completed Q-values: unvisited actions get the mixed value (raw value and the
    prior-weighted Q of visited actions), optionally rescaled to [0, 1], times (maxvisit_init + max visits)
    · value_scale. Returns [B, A] float32 for node [B] int64."""
    return _completed_by_mix_value(tree, node, tree.children_statistics(node), value_scale=value_scale,
                                   maxvisit_init=maxvisit_init, rescale_values=rescale_values,
                                   use_mixed_value=use_mixed_value, epsilon=epsilon)


def _completed_by_mix_value(tree, node, statistics, *, value_scale=0.1, maxvisit_init=50.0, rescale_values=True,
                            use_mixed_value=True, epsilon=1e-8):
    _, qvalues, visits = statistics
    visited = visits > 0
    raw_value = _node_stat(tree.raw_values, node)
    if use_mixed_value:
        prior_probs = torch.softmax(tree.edge_prior.gather(1, tree.edges_of(node)), dim=-1)
        value = _mixed_value(raw_value, qvalues, visits, prior_probs)
    else:
        value = raw_value
    completed = torch.where(visited, qvalues, value[:, None])
    if rescale_values:
        low = completed.amin(-1, keepdim=True)
        high = completed.amax(-1, keepdim=True)
        completed = (completed - low) / torch.clamp(high - low, min=epsilon)
    visit_scale = maxvisit_init + visits.amax(-1).float()
    return (visit_scale * value_scale)[:, None] * completed


def _mixed_value(raw_value, qvalues, visits, prior_probs) -> torch.Tensor:
    """[B]: (raw value + N · sum_visited(pi · q) / sum_visited(pi)) / (N + 1), N = the children's visits."""
    visited = visits > 0
    sum_visits = visits.sum(-1).float()
    prior_probs = torch.clamp(prior_probs, min=_TINY)  # a visited action with prior 0 must not give NaN
    sum_probs = torch.where(visited, prior_probs, 0.0).sum(-1, keepdim=True)
    weighted_q = torch.where(visited, prior_probs * qvalues / torch.where(visited, sum_probs, 1.0), 0.0).sum(-1)
    return (raw_value + sum_visits * weighted_q) / (sum_visits + 1)


_IMPLEMENTATIONS = {qtransform_by_min_max: _by_min_max, qtransform_by_parent_and_siblings: _by_parent_and_siblings,
                    qtransform_completed_by_mix_value: _completed_by_mix_value}
