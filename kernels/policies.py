"""mctx's discrete-action policies in PyTorch: ``muzero_policy`` and ``gumbel_muzero_policy``.

Same names, inputs and outputs as mctx (https://github.com/google-deepmind/mctx), minus ``params`` and
``rng_key``: ``recurrent_fn(embedding, action)`` closes over its parameters, and randomness comes from a
``torch.Generator`` or from explicit noise tensors, so a search is reproducible. The search runs on the
tree storage, launch dispatch and validation shared with EZ-M's sampled search (``kernels.tree``,
``kernels.search.resolve_backend``): the torch reference anywhere, the Triton kernels for CUDA tensors.

One deliberate difference: mctx's muzero selection adds 1e-7 · U(0, 1) to every score to break ties at
random; here ties go to the lowest action, the same on every backend (the parity tests run mctx with that
noise set to 0; nothing else differs).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from . import discrete
from .discrete import DiscreteSearchConfig, masked_argmax, score_considered
from .qtransforms import qtransform_by_parent_and_siblings, qtransform_completed_by_mix_value
from .search import _describe, resolve_backend
from .tree import Tree

__all__ = ["RootFnOutput", "RecurrentFnOutput", "PolicyOutput", "muzero_policy", "gumbel_muzero_policy"]

_TINY = torch.finfo(torch.float32).tiny
_MIN = torch.finfo(torch.float32).min


class RootFnOutput(NamedTuple):
    """The model's output at the B roots (mctx ``RootFnOutput``)."""

    prior_logits: torch.Tensor  # [B, A] float
    value: torch.Tensor  # [B] float
    embedding: torch.Tensor  # [B, ...]: the root latent handed to recurrent_fn


class RecurrentFnOutput(NamedTuple):
    """The model's output for B (embedding, action) pairs (mctx ``RecurrentFnOutput``)."""

    reward: torch.Tensor  # [B] float: reward of the action, for the player who took it
    discount: torch.Tensor  # [B] float: discount of the next value (-1: two-player zero-sum; 0: terminal)
    prior_logits: torch.Tensor  # [B, A] float: prior logits at the next state
    value: torch.Tensor  # [B] float: value of the next state


RecurrentFn = Callable[[torch.Tensor, torch.Tensor], tuple[RecurrentFnOutput, torch.Tensor]]
"""recurrent_fn(embedding [B, ...], action [B] int64) -> (RecurrentFnOutput, next_embedding [B, ...])."""


class PolicyOutput(NamedTuple):
    """A policy's decision for B states (mctx ``PolicyOutput``)."""

    action: torch.Tensor  # [B] int64: the action to take
    action_weights: torch.Tensor  # [B, A] float32: the policy training target
    search_tree: Tree  # the searched trees (mctx names: node_visits, children_index, summary() …)


def muzero_policy(root: RootFnOutput, recurrent_fn: RecurrentFn, num_simulations: int, *,
                  invalid_actions: Optional[torch.Tensor] = None, max_depth: Optional[int] = None,
                  dirichlet_fraction: float = 0.25, dirichlet_alpha: float = 0.3, pb_c_init: float = 1.25,
                  pb_c_base: float = 19652, temperature: float = 1.0,
                  qtransform: Callable = qtransform_by_parent_and_siblings,
                  generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                  action_gumbel: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> PolicyOutput:
    """MuZero's search: PUCT at every node, Dirichlet noise at the root, an action sampled from the visit
    counts at ``temperature`` (mctx ``muzero_policy``).

    Args:
      root: ``RootFnOutput`` of B roots with A actions.
      recurrent_fn: ``(embedding [B, ...], action [B] int64) -> (RecurrentFnOutput, next_embedding)``,
        called once per simulation for all trees.
      num_simulations: N >= 1.
      invalid_actions: optional [B, A] bool (True = invalid), masked at the root.
      max_depth: optional int >= 1: selection stops at this many edges (default: N).
      dirichlet_fraction, dirichlet_alpha: root noise: probs = (1 - fraction) · softmax(prior) + fraction ·
        Dirichlet(alpha).
      pb_c_init, pb_c_base: PUCT constants.
      temperature: >= 0; the action is sampled from visit_probs ** (1 / temperature) (0: most visited).
      qtransform: the value term, e.g. ``functools.partial(qtransform_by_min_max, min_value=-1, max_value=1)``.
      generator: the ``torch.Generator`` (on the inputs' device) for the noise not passed explicitly.
      noise: optional [B, A] float, the Dirichlet draw (rows on the simplex).
      action_gumbel: optional [B, A] float, the standard Gumbel draw that samples the action (the action is
        argmax(logits / temperature + action_gumbel), mctx's ``jax.random.categorical``).
      backend: None (Triton kernels for CUDA tensors, torch otherwise), "torch", "triton" or "inductor" (the
        torch reference with each selection step compiled by torch.compile: the fast CPU path once compiled;
        the first search of a shape compiles, tens of seconds).

    Returns:
      ``PolicyOutput(action [B] int64, action_weights [B, A] float32 = visit_probs, search_tree)``.
    """
    _check_common(root, num_simulations, invalid_actions, max_depth, qtransform)
    _check_real("dirichlet_fraction", dirichlet_fraction, low=0.0, high=1.0)
    _check_real("dirichlet_alpha", dirichlet_alpha, low=0.0, open_low=True)
    _check_real("pb_c_init", pb_c_init)
    _check_real("pb_c_base", pb_c_base, low=0.0, open_low=True)
    _check_real("temperature", temperature, low=0.0)
    batch, num_actions = root.prior_logits.shape
    device = root.prior_logits.device
    noise = _checked_noise("noise", noise, batch, num_actions, device)
    action_gumbel = _checked_noise("action_gumbel", action_gumbel, batch, num_actions, device)
    backend = resolve_backend(backend, device)

    if noise is None:
        noise = _dirichlet(dirichlet_alpha, batch, num_actions, device, generator)
    probs = torch.softmax(root.prior_logits.float(), dim=-1)
    noisy_probs = (1 - dirichlet_fraction) * probs + dirichlet_fraction * noise.float()
    prior_logits = _mask_invalid_actions(_logits_from_probs(noisy_probs), invalid_actions)
    config = DiscreteSearchConfig(num_simulations=num_simulations, max_depth=max_depth or num_simulations,
                                  rule="muzero", qtransform=qtransform, pb_c_init=float(pb_c_init),
                                  pb_c_base=float(pb_c_base))
    tree = _search(prior_logits, root, recurrent_fn, config, invalid_actions, None, backend)

    action_weights = tree.summary().visit_probs
    logits = _logits_from_probs(action_weights)
    logits = (logits - logits.amax(-1, keepdim=True)) / max(_TINY, temperature)
    if action_gumbel is None:
        action_gumbel = _gumbel(batch, num_actions, device, generator)
    action = (logits + action_gumbel.float()).argmax(-1)
    return PolicyOutput(action=action, action_weights=action_weights, search_tree=tree)


def gumbel_muzero_policy(root: RootFnOutput, recurrent_fn: RecurrentFn, num_simulations: int, *,
                         invalid_actions: Optional[torch.Tensor] = None, max_depth: Optional[int] = None,
                         qtransform: Callable = qtransform_completed_by_mix_value,
                         max_num_considered_actions: int = 16, gumbel_scale: float = 1.0,
                         generator: Optional[torch.Generator] = None, gumbel: Optional[torch.Tensor] = None,
                         backend: Optional[str] = None) -> PolicyOutput:
    """Gumbel MuZero's search: Gumbel top-k and sequential halving at the root, deterministic selection
    below it, the completed-Q improved policy as the target (mctx ``gumbel_muzero_policy``).

    Args:
      root, recurrent_fn, num_simulations, invalid_actions, max_depth, qtransform, generator, backend:
        as ``muzero_policy``.
      max_num_considered_actions: >= 1, root actions sampled without replacement (Gumbel top-k).
      gumbel_scale: >= 0, the Gumbel noise is gumbel_scale · ``gumbel`` (0: deterministic search).
      gumbel: optional [B, A] float, the standard Gumbel draw (drawn from ``generator`` when None).

    Returns:
      ``PolicyOutput(action [B] int64: the best considered action by g + logits + completed Q,
      action_weights [B, A] float32: softmax(logits + completed Q) over valid actions, search_tree)``.
    """
    _check_common(root, num_simulations, invalid_actions, max_depth, qtransform)
    if isinstance(max_num_considered_actions, bool) or not isinstance(max_num_considered_actions, int) \
            or max_num_considered_actions < 1:
        raise ValueError(f"max_num_considered_actions must be an integer >= 1, got {max_num_considered_actions!r}")
    _check_real("gumbel_scale", gumbel_scale, low=0.0)
    batch, num_actions = root.prior_logits.shape
    device = root.prior_logits.device
    gumbel = _checked_noise("gumbel", gumbel, batch, num_actions, device)
    backend = resolve_backend(backend, device)

    prior_logits = _mask_invalid_actions(root.prior_logits.float(), invalid_actions)
    if gumbel is None:
        gumbel = _gumbel(batch, num_actions, device, generator)
    gumbel = gumbel_scale * gumbel.float()
    config = DiscreteSearchConfig(num_simulations=num_simulations, max_depth=max_depth or num_simulations,
                                  rule="gumbel_muzero", qtransform=qtransform,
                                  max_num_considered_actions=max_num_considered_actions)
    tree = _search(prior_logits, root, recurrent_fn, config, invalid_actions, gumbel, backend)

    visit_counts = tree.summary().visit_counts
    considered_visit = visit_counts.amax(-1, keepdim=True)
    root_index = torch.zeros(batch, dtype=torch.int64, device=device)
    completed_qvalues = qtransform(tree, root_index)
    scores = score_considered(considered_visit, gumbel, prior_logits, completed_qvalues, visit_counts)
    action = masked_argmax(scores, invalid_actions)
    action_weights = torch.softmax(_mask_invalid_actions(prior_logits + completed_qvalues, invalid_actions), dim=-1)
    return PolicyOutput(action=action, action_weights=action_weights, search_tree=tree)


def _search(prior_logits, root, recurrent_fn, config: DiscreteSearchConfig, invalid_actions, gumbel,
            backend) -> Tree:
    """mctx ``search``: N simulations of select, expand (one recurrent_fn call for all trees), backup."""
    ops = _discrete_ops(backend, config)
    tree = discrete.init_discrete_tree(prior_logits, root.value, root.embedding, config.num_simulations,
                                       invalid_actions, gumbel, config.max_num_considered_actions)
    batch, num_nodes = tree.batch_size, tree.num_nodes
    rows = torch.arange(batch, device=prior_logits.device) * num_nodes
    for simulation in range(config.num_simulations):
        selection = ops.select_discrete(tree, config, simulation)
        embedding = tree.embeddings.flatten(0, 1).index_select(0, rows + selection.parent)
        out = recurrent_fn(embedding, selection.slot)
        if simulation == 0:
            out = _check_model_outputs(out, root.embedding, batch, tree.num_actions)
        step, next_embedding = out
        discrete.expand_discrete(tree, selection, step.reward, step.discount, step.prior_logits, step.value,
                                 next_embedding)
        ops.backup_discrete(tree, config, simulation, selection)
    return tree


def _discrete_ops(backend: str, config: DiscreteSearchConfig):
    """The module whose select_discrete / backup_discrete run this search."""
    if backend == "triton":
        from . import triton_ops

        triton_ops.discrete_kernel_params(config)  # a custom qtransform has no kernel: say so before any work
        return triton_ops
    if backend == "inductor":
        from . import compiled

        return compiled
    return discrete


def _logits_from_probs(probs: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.clamp(probs, min=_TINY))


def _mask_invalid_actions(logits: torch.Tensor, invalid_actions: Optional[torch.Tensor]) -> torch.Tensor:
    """Logits shifted to max 0 with invalid actions at the lowest float (not -inf: a softmax of an
    all-invalid row stays finite), mctx ``_mask_invalid_actions``."""
    if invalid_actions is None:
        return logits
    logits = logits - logits.amax(-1, keepdim=True)
    return torch.where(invalid_actions, _MIN, logits)


def _gumbel(batch, num_actions, device, generator) -> torch.Tensor:
    uniform = torch.rand(batch, num_actions, device=device, generator=generator).clamp_(min=_TINY)
    return -torch.log(-torch.log(uniform))


def _dirichlet(alpha, batch, num_actions, device, generator) -> torch.Tensor:
    gamma = torch._standard_gamma(torch.full((batch, num_actions), float(alpha), device=device), generator=generator)
    return gamma / gamma.sum(-1, keepdim=True)


def _check_real(name, value, low=None, high=None, open_low=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        raise ValueError(f"{name} must be {'>' if open_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def _check_common(root, num_simulations, invalid_actions, max_depth, qtransform) -> None:
    """The root, sizes, invalid actions and qtransform, before any work (shapes, dtypes, devices)."""
    if not isinstance(root, RootFnOutput):
        raise TypeError(f"root must be a RootFnOutput(prior_logits, value, embedding), got {type(root).__name__}")
    for name in ("prior_logits", "value", "embedding"):
        if not isinstance(getattr(root, name), torch.Tensor):
            raise TypeError(f"root.{name} must be a torch.Tensor, got {type(getattr(root, name)).__name__}")
    logits = root.prior_logits
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 1 or not logits.is_floating_point():
        raise ValueError(f"root.prior_logits must be a float [B, A] tensor with B, A >= 1, got {_describe(logits)}")
    batch, num_actions = logits.shape
    if tuple(root.value.shape) != (batch,) or not root.value.is_floating_point():
        raise ValueError(f"root.value must be a float [B] tensor with B={batch}, got {_describe(root.value)}")
    if root.embedding.dim() < 1 or root.embedding.shape[0] != batch:
        raise ValueError(f"root.embedding must be [B, ...] with B={batch}, got {_describe(root.embedding)}")
    for name in ("value", "embedding"):
        if getattr(root, name).device != logits.device:
            raise ValueError(f"root.{name} is on {getattr(root, name).device}, root.prior_logits on {logits.device}")
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, int) or num_simulations < 1:
        raise ValueError(f"num_simulations must be an integer >= 1, got {num_simulations!r}")
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
        raise ValueError(f"max_depth must be None or an integer >= 1, got {max_depth!r}")
    if invalid_actions is not None:
        if not isinstance(invalid_actions, torch.Tensor) or tuple(invalid_actions.shape) != (batch, num_actions) \
                or invalid_actions.dtype != torch.bool or invalid_actions.device != logits.device:
            raise ValueError(f"invalid_actions must be a bool [B, A] = [{batch}, {num_actions}] tensor on "
                             f"{logits.device} (True = invalid), got {_describe(invalid_actions)}")
    if not callable(qtransform):
        raise TypeError(f"qtransform must be callable qtransform(tree, node) -> [B, A], got {qtransform!r}")
    if batch * (num_simulations + 1) * num_actions >= 2**31:
        raise ValueError(f"B * (N + 1) * A = {batch * (num_simulations + 1) * num_actions} must stay below 2**31 "
                         "(int32 offsets in the kernels)")


def _checked_noise(name, noise, batch, num_actions, device) -> Optional[torch.Tensor]:
    if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (batch, num_actions)
                              or not noise.is_floating_point() or noise.device != device):
        raise ValueError(f"{name} must be a float [B, A] = [{batch}, {num_actions}] tensor on {device}, got "
                         f"{_describe(noise)}")
    return noise


def _check_model_outputs(out, root_embedding, batch, num_actions):
    """The first recurrent_fn call's outputs, checked once (shapes are fixed for the whole search)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[0], (tuple, list)) \
            or len(out[0]) != 4:
        raise ValueError("recurrent_fn must return (RecurrentFnOutput(reward, discount, prior_logits, value), "
                         f"next_embedding), got {type(out).__name__}")
    step, next_embedding = RecurrentFnOutput(*out[0]), out[1]
    shapes = {"reward": (batch,), "discount": (batch,), "prior_logits": (batch, num_actions), "value": (batch,)}
    for name, shape in shapes.items():
        tensor = getattr(step, name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or tensor.device != root_embedding.device:
            raise ValueError(f"recurrent_fn output {name} must be a [{', '.join(map(str, shape))}] tensor on "
                             f"{root_embedding.device}, got {_describe(tensor)}")
    if not isinstance(next_embedding, torch.Tensor) or next_embedding.shape != root_embedding.shape:
        raise ValueError(f"recurrent_fn's next embedding must have the root embedding's shape "
                         f"{list(root_embedding.shape)}, got {_describe(next_embedding)}")
    return step, next_embedding
