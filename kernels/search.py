"""The batched sampled Gumbel search: validation, backend dispatch, the simulation loop, outputs."""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple, Optional

import torch

from . import reference
from .config import SearchConfig
from .tree import Selection, Tree, expand, init_tree, nan_to_lowest

__all__ = [
    "SearchOutput",
    "SampledRecurrentFn",
    "SampledRecurrentFnOutput",
    "sampled_gumbel_search",
    "select",
    "backup",
    "sequential_halving",
    "root_outputs",
    "resolve_backend",
]

Backend = Literal["torch", "triton", "inductor"]

class SampledRecurrentFnOutput(NamedTuple):
    """What ``recurrent_fn`` returns for B nodes being expanded (a plain 5-tuple in this order works too)."""

    next_embedding: torch.Tensor  # [B, D, ...] latent of the new node
    reward: torch.Tensor  # [B] reward of the edge into it
    value: torch.Tensor  # [B] value estimate of the new node
    child_actions: torch.Tensor  # [B, k, A] the k actions the new node's children take
    child_prior_logits: torch.Tensor  # [B, k] their prior logits


SampledRecurrentFn = Callable[[torch.Tensor, torch.Tensor], SampledRecurrentFnOutput]
"""recurrent_fn(embedding [B, D], action [B, A]) -> SampledRecurrentFnOutput."""


@dataclasses.dataclass
class SearchOutput:
    """Result of a search over B trees with K root candidates and A action dims."""

    action_index: torch.Tensor  # [B] int64: chosen root slot (best surviving root score)
    action: torch.Tensor  # [B, A]: root_actions[b, action_index[b]]
    root_value: torch.Tensor  # [B] float32: V(0) = W(0) / N(0)
    visit_counts: torch.Tensor  # [B, K] int32: visits of the root's children
    completed_q: torch.Tensor  # [B, K] float32: Q~(0, a)
    action_weights: torch.Tensor  # [B, K] float32: softmax(p + sigma), the improved policy
    pi_prime_scores: torch.Tensor  # [B, K] float32: p + sigma, unnormalised (no Gumbel)
    considered: torch.Tensor  # [B, K] bool: final survivors as a mask
    survivors: torch.Tensor  # [B, K] int64: final survivors in order, -1 padded
    tree: Optional[Tree] = None  # the whole tree, for inspection


def resolve_backend(backend: Optional[str], device: torch.device) -> Backend:
    """``None`` picks Triton for CUDA tensors and torch otherwise; an explicit choice is checked.

    "torch": the eager reference, any device. "triton": the Triton kernels (CUDA, or the interpreter
    under TRITON_INTERPRET=1). "inductor": the reference with selection and backup compiled by
    torch.compile, the fast CPU path once compiled (first search of a shape compiles).
    """
    if backend is None:
        return "triton" if device.type == "cuda" else "torch"
    if backend not in ("torch", "triton", "inductor"):
        raise ValueError(f"backend must be 'torch', 'triton', 'inductor' or None (automatic), got {backend!r}")
    if backend == "triton":
        from . import triton_ops

        if not triton_ops.available(device):
            raise ValueError(
                f"backend='triton' needs a CUDA device or TRITON_INTERPRET=1 (interpreter); tensors are on "
                f"{device} and {triton_ops.unavailable_reason()}")
    return backend


def _ops(backend: Backend):
    if backend == "triton":
        from . import triton_ops

        return triton_ops
    if backend == "inductor":
        from . import compiled

        return compiled
    return reference


def select(tree: Tree, config: SearchConfig, simulation: int, backend: Optional[str] = None) -> Selection:
    """Selection of simulation s (search.md step 1); see ``reference.select``."""
    return _ops(resolve_backend(backend, tree.edge_child.device)).select(tree, config, simulation)


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor,
           backend: Optional[str] = None) -> None:
    """Backup of simulation s from node s+1 with G = leaf_value [B] (search.md step 3), in place."""
    _ops(resolve_backend(backend, tree.edge_child.device)).backup(tree, config, simulation, leaf_value)


def sequential_halving(tree: Tree, config: SearchConfig, simulation: int, backend: Optional[str] = None) -> None:
    """Sequential halving after simulation s (search.md step 4), in place; a no-op off schedule."""
    _ops(resolve_backend(backend, tree.edge_child.device)).sequential_halving(tree, config, simulation)


def root_outputs(tree: Tree, config: SearchConfig, root_actions: torch.Tensor,
                 margin: Optional[torch.Tensor] = None) -> SearchOutput:
    """Outputs of search.md from a searched tree; root_actions [B, K, A]. margin: optional [B] float32,
    lowered in place by the final choice's closest gap (``reference.record_margin``)."""
    schedule = config.schedule(tree.num_root_actions)
    num_root = tree.num_root_actions
    score, pi_prime_scores, completed_q = reference.root_scores(tree, config)
    survivors = tree.survivors[:, :schedule.final_survivors]
    survivor_score = score.gather(1, survivors)
    reference.record_margin(margin, survivor_score)
    best = nan_to_lowest(survivor_score).argmax(1, keepdim=True)  # first maximum = earliest survivor
    action_index = survivors.gather(1, best)[:, 0]
    child = tree.edge_child[:, :num_root]
    visit_counts = tree.node_visits.gather(1, child.clamp(min=0)).masked_fill_(child < 0, 0)
    considered = torch.zeros_like(child, dtype=torch.bool).scatter_(1, survivors, True)
    return SearchOutput(
        action_index=action_index,
        action=root_actions.gather(1, action_index[:, None, None].expand(-1, 1, root_actions.shape[2]))[:, 0],
        root_value=tree.node_value_sum[:, 0] / tree.node_visits[:, 0].float(),
        visit_counts=visit_counts,
        completed_q=completed_q,
        action_weights=torch.softmax(pi_prime_scores, dim=1),
        pi_prime_scores=pi_prime_scores,
        considered=considered,
        survivors=tree.survivors.clone(),
        tree=tree,
    )


def sampled_gumbel_search(
    root_embedding: torch.Tensor,
    root_value: torch.Tensor,
    root_actions: torch.Tensor,
    root_prior_logits: torch.Tensor,
    recurrent_fn: SampledRecurrentFn,
    config: SearchConfig = SearchConfig(),
    gumbel: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
    check_finite: bool = True,
) -> SearchOutput:
    """Runs EZ-M's sampled Gumbel search for B trees at once (``docs/search.md``).

    Args:
      root_embedding: [B, D] float, the root latent handed to ``recurrent_fn``.
      root_value: [B] float, v0 (must be finite).
      root_actions: [B, K, A] float, the K sampled root candidates.
      root_prior_logits: [B, K] float, root prior logits (EZ-M: zeros).
      recurrent_fn: ``(embedding [B, D], action [B, A]) -> (next_embedding [B, D], reward [B],
        value [B], child_actions [B, k, A], child_prior_logits [B, k])``, called once per simulation
        for all trees.
      config: a ``SearchConfig``.
      gumbel: optional [B, K] float Gumbel noise g (EZ-M continuous control: zeros, the default).
      backend: ``"torch"`` (reference, any device), ``"triton"`` (CUDA, or the interpreter under
        TRITON_INTERPRET=1), ``"inductor"`` (the reference with selection and backup compiled by
        torch.compile; compiles on first use) or ``None``: Triton for CUDA tensors, torch otherwise.
      check_finite: reject a non-finite ``root_value`` before the search. This reads one flag back
        from the device; a no-sync acting loop on CUDA passes False (shapes, dtypes and devices are
        always checked, at no device cost).

    Returns:
      A ``SearchOutput``. No host synchronisation happens inside the search and all shapes are fixed.
    """
    _check_inputs(root_embedding, root_value, root_actions, root_prior_logits, gumbel, config, check_finite)
    return _simulate(root_embedding, root_value, root_actions, root_prior_logits, recurrent_fn, config, gumbel,
                     _ops(resolve_backend(backend, root_actions.device)))


def _simulate(root_embedding, root_value, root_actions, root_prior_logits, recurrent_fn, config, gumbel, ops,
              margin: Optional[torch.Tensor] = None) -> SearchOutput:
    """The search on checked inputs with one backend's ops; with ``margin`` ([B], reference ops only), every
    float-ranked decision lowers it to its closest gap (``kernels.agreement``)."""
    traced = {} if margin is None else {"margin": margin}
    batch, num_root, _ = root_actions.shape
    n, k = config.num_simulations, config.num_child_actions
    if gumbel is None:
        gumbel = torch.zeros(batch, num_root, dtype=torch.float32, device=root_actions.device)
    tree = init_tree(root_value, root_actions, root_prior_logits, gumbel, config)
    embeddings = root_embedding.new_empty((batch, n + 1) + tuple(root_embedding.shape[1:]))
    embeddings[:, 0] = root_embedding
    tree.embeddings = embeddings
    node_rows = torch.arange(batch, device=root_actions.device) * (n + 1)  # row offsets into [B * (N+1), ...]
    edge_rows = torch.arange(batch, device=root_actions.device) * tree.num_edges
    for simulation in range(n):
        selection = ops.select(tree, config, simulation, **traced)
        action = tree.edge_action.flatten(0, 1).index_select(0, edge_rows + selection.edge)
        out = recurrent_fn(embeddings.flatten(0, 1).index_select(0, node_rows + selection.parent), action)
        next_embedding, reward, value, child_actions, child_prior_logits = _check_model_outputs(
            out, root_embedding, batch, k, root_actions.shape[2]) if simulation == 0 else out
        embeddings[:, simulation + 1] = next_embedding
        expand(tree, simulation, selection, reward, child_actions, child_prior_logits)
        ops.backup(tree, config, simulation, value)
        ops.sequential_halving(tree, config, simulation, **traced)
    return root_outputs(tree, config, root_actions, margin)


def _describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else repr(type(t))


def _check_inputs(root_embedding, root_value, root_actions, root_prior_logits, gumbel, config,
                  check_finite=True) -> None:
    """Shapes, dtypes, devices and finiteness of the inputs, before any work."""
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got {type(config).__name__}")
    named = {"root_embedding": root_embedding, "root_value": root_value, "root_actions": root_actions,
             "root_prior_logits": root_prior_logits}
    if gumbel is not None:
        named["gumbel"] = gumbel
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if root_actions.dim() != 3:
        raise ValueError(f"root_actions must be [B, K, A], got {_describe(root_actions)}")
    batch, num_root, action_dim = root_actions.shape
    if batch < 1 or num_root < 1 or action_dim < 1:
        raise ValueError(f"root_actions [B, K, A] needs B, K, A >= 1, got {tuple(root_actions.shape)}")
    expected = {"root_value": (batch,), "root_prior_logits": (batch, num_root), "gumbel": (batch, num_root)}
    for name, shape in expected.items():
        if name in named and tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} ([B] or [B, K] with B={batch}, "
                             f"K={num_root} from root_actions), got {_describe(named[name])}")
    if root_embedding.dim() < 2 or root_embedding.shape[0] != batch:
        raise ValueError(f"root_embedding must be [B, D, ...] with B={batch}, got {_describe(root_embedding)}")
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        raise ValueError("all inputs must be on one device, got " +
                         ", ".join(f"{name} on {t.device}" for name, t in named.items()))
    if check_finite and not bool(torch.isfinite(root_value).all()):
        raise ValueError("root_value must be finite (no NaN or inf)")
    if num_root > 1024:
        raise ValueError(f"K (root_actions.shape[1]) must be <= 1024, got {num_root}")
    if config.num_child_actions > 1024:
        raise ValueError(f"SearchConfig.num_child_actions must be <= 1024, got {config.num_child_actions}")
    num_edges = num_root + config.num_simulations * config.num_child_actions
    if batch * max(num_edges, config.num_simulations + 1) >= 2**31:
        raise ValueError(f"B * (K + N * k) = {batch * num_edges} must stay below 2**31 (int32 offsets in the "
                         "kernels)")


def _check_model_outputs(out, root_embedding, batch, k, action_dim):
    """The first recurrent_fn call's outputs, checked once (shapes are fixed for the whole search)."""
    if not isinstance(out, (tuple, list)) or len(out) != 5:
        raise ValueError("recurrent_fn must return a SampledRecurrentFnOutput (next_embedding, reward, value, "
                         f"child_actions, child_prior_logits), got {type(out).__name__} of length "
                         f"{len(out) if isinstance(out, (tuple, list)) else '-'}")
    names = ("next_embedding", "reward", "value", "child_actions", "child_prior_logits")
    shapes = (tuple(root_embedding.shape), (batch,), (batch,), (batch, k, action_dim), (batch, k))
    for name, tensor, shape in zip(names, out, shapes):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(f"recurrent_fn output {name} must have shape {list(shape)} (k = "
                             f"SearchConfig.num_child_actions = {k}), got {_describe(tensor)}")
        if tensor.device != root_embedding.device:
            raise ValueError(f"recurrent_fn output {name} is on {tensor.device}, the search on "
                             f"{root_embedding.device}")
    return SampledRecurrentFnOutput(*out)
