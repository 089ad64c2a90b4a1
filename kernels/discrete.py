"""The discrete-action search of mctx on the shared tree: reference operations (pure torch, any device).

K = k = A actions per node. ``init_discrete_tree`` expands the root, then each simulation runs
``select_discrete`` (walk from the root by the policy's selection rule until an unexpanded action or the
depth cutoff), ``expand_discrete`` (write the model's outputs into the new node, or over the existing one
at the depth cutoff, as mctx does) and ``backup_discrete`` (running-mean update of every node on the path).
Loops run over depth with per-tree masks, never over trees; on CPU they stop as soon as every tree is
done (a host read is free there), elsewhere at their static bound, so nothing reads back from a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import torch

from .qtransforms import apply_qtransform
from .tree import _LINK, Selection, Tree

__all__ = ["DiscreteSearchConfig", "init_discrete_tree", "select_discrete", "expand_discrete", "backup_discrete",
           "considered_visits_table", "score_considered", "masked_argmax"]

@dataclasses.dataclass(frozen=True)
class DiscreteSearchConfig:
    """What a discrete search does at each node (built by ``muzero_policy`` / ``gumbel_muzero_policy``)."""

    num_simulations: int  # N
    max_depth: int  # edges from the root at which selection stops (mctx max_depth; N when None)
    rule: str  # "muzero" (PUCT at every node) or "gumbel_muzero" (considered visits at the root)
    qtransform: Callable  # qtransform(tree, node [B]) -> [B, A]
    pb_c_init: float = 1.25  # muzero: PUCT exploration constants
    pb_c_base: float = 19652.0
    max_num_considered_actions: int = 16  # gumbel_muzero: root actions considered by sequential halving


@functools.lru_cache(maxsize=64)
def considered_visits_table(max_num_considered_actions: int, num_simulations: int) -> tuple[tuple[int, ...], ...]:
    """mctx's sequential-halving table: row m (0 … max_num_considered_actions) gives, for each simulation
    index, the visit count an action must have to be considered when m actions are considered."""
    def sequence(m: int) -> tuple[int, ...]:
        if m <= 1:
            return tuple(range(num_simulations))
        log2max = int(math.ceil(math.log2(m)))
        out, visits, considered = [], [0] * m, m
        while len(out) < num_simulations:
            extra = max(1, int(num_simulations / (log2max * considered)))
            for _ in range(extra):
                out.extend(visits[:considered])
                for i in range(considered):
                    visits[i] += 1
            considered = max(2, considered // 2)
        return tuple(out[:num_simulations])

    return tuple(sequence(m) for m in range(max_num_considered_actions + 1))


def score_considered(considered_visit: torch.Tensor, gumbel: torch.Tensor, logits: torch.Tensor,
                     normalized_qvalues: torch.Tensor, visit_counts: torch.Tensor) -> torch.Tensor:
    """[B, A]: g + logits + q for actions with exactly ``considered_visit`` ([B, 1]) visits, -inf otherwise
    (mctx ``seq_halving.score_considered``; logits shifted by their maximum, scores floored at -1e9)."""
    logits = logits - logits.amax(-1, keepdim=True)
    penalty = torch.where(visit_counts == considered_visit, 0.0, float("-inf"))
    return torch.clamp(gumbel + logits + normalized_qvalues, min=-1e9) + penalty


def masked_argmax(scores: torch.Tensor, invalid: Optional[torch.Tensor]) -> torch.Tensor:
    """[B] int64 argmax of scores [B, A] over valid actions, the lowest index on ties; action 0 when all
    are invalid (mctx ``masked_argmax``)."""
    if invalid is not None:
        scores = torch.where(invalid, float("-inf"), scores)
    return scores.argmax(-1)


def init_discrete_tree(prior_logits: torch.Tensor, value: torch.Tensor, embedding: torch.Tensor,
                       num_simulations: int, invalid_actions: Optional[torch.Tensor],
                       gumbel: Optional[torch.Tensor], max_num_considered_actions: int = 16) -> Tree:
    """B trees of N+1 nodes with the root expanded (mctx ``instantiate_tree_from_root``).

    Args:
      prior_logits: [B, A] float, the root's prior logits (noise and masking already applied).
      value: [B] float, the root value.
      embedding: [B, ...], the root latent.
      num_simulations: N.
      invalid_actions: optional [B, A] bool, invalid root actions.
      gumbel: optional [B, A] float, scaled root Gumbel noise (gumbel_muzero).
      max_num_considered_actions: gumbel_muzero's m, the rows of the considered-visits table.
    """
    batch, num_actions = prior_logits.shape
    num_nodes = num_simulations + 1
    device = prior_logits.device

    def nodes(fill, dtype):
        return torch.full((batch, num_nodes), fill, dtype=dtype, device=device)

    tree = Tree(
        node_visits=nodes(0, torch.int32),
        node_value_sum=None,
        node_reward=nodes(0.0, torch.float32),
        node_discount=nodes(0.0, torch.float32),
        node_parent=nodes(-1, _LINK),
        node_slot=nodes(-1, _LINK),
        edge_child=torch.full((batch, num_nodes * num_actions), -1, dtype=_LINK, device=device),
        edge_prior=torch.zeros(batch, num_nodes * num_actions, dtype=torch.float32, device=device),
        edge_policy=torch.zeros(batch, num_nodes * num_actions, dtype=torch.float32, device=device),
        edge_action=None,
        gumbel=(torch.zeros(batch, num_actions, device=device) if gumbel is None else gumbel.float()).contiguous(),
        survivors=None,
        minmax_lo=None,
        minmax_hi=None,
        num_root_actions=num_actions,
        num_child_actions=num_actions,
        node_value=nodes(0.0, torch.float32),
        node_raw_value=nodes(0.0, torch.float32),
        root_invalid=None if invalid_actions is None else invalid_actions.bool().contiguous(),
        considered_visits=torch.tensor(considered_visits_table(max_num_considered_actions, num_simulations),
                                       dtype=torch.int32, device=device),
        embeddings=embedding.new_zeros((batch, num_nodes) + tuple(embedding.shape[1:])),
    )
    root = torch.zeros(batch, dtype=_LINK, device=device)
    _write_node(tree, root, prior_logits, value, embedding)
    return tree


def _write_node(tree: Tree, node: torch.Tensor, prior_logits: torch.Tensor, value: torch.Tensor,
                embedding: torch.Tensor) -> None:
    """mctx ``update_tree_node``: the node's priors, raw and mean value overwritten, one more visit."""
    index = node[:, None]
    rows = torch.arange(tree.batch_size, device=node.device)
    tree.node_visits.scatter_add_(1, index, torch.ones_like(index, dtype=tree.node_visits.dtype))
    tree.node_value.scatter_(1, index, value.float()[:, None])
    tree.node_raw_value.scatter_(1, index, value.float()[:, None])
    edges = tree.edges_of(node)
    tree.edge_prior.scatter_(1, edges, prior_logits.float())
    tree.edge_policy.scatter_(1, edges, torch.softmax(prior_logits.float(), dim=-1))
    tree.embeddings[rows, node] = embedding


def _walk_bound(config: DiscreteSearchConfig, simulation: int) -> int:
    """Edges a path can have at simulation s: the tree is at most s+1 deep, and never past max_depth."""
    return max(1, min(config.max_depth, simulation + 1))


def _all_done(going: torch.Tensor) -> bool:
    """True when no tree is still walking; only asked on CPU, where reading a flag costs no transfer."""
    return going.device.type == "cpu" and not bool(going.any())


def choose_action(tree: Tree, config: DiscreteSearchConfig, node: torch.Tensor, at_root: bool) -> torch.Tensor:
    """[B] int64: the action the policy's selection rule takes at ``node`` ([B] int64).

    muzero: argmax of qtransform + sqrt(N) · c(N) · prior / (1 + N(a)) (root: valid actions only).
    gumbel_muzero: at the root, argmax of g + logits + q over the actions with the considered visit count
    of this simulation (valid actions only); below it, argmax of softmax(logits + q) - N(a) / (1 + sum N).
    Ties go to the lowest action (mctx's muzero adds 1e-7 · U(0, 1) noise to break them at random).
    """
    edges = tree.edges_of(node)
    statistics = tree.children_statistics(node)
    visits = statistics[2]
    prior_logits = tree.edge_prior.gather(1, edges)
    qvalues = apply_qtransform(config.qtransform, tree, node, statistics)
    invalid = tree.root_invalid if at_root else None
    if config.rule == "muzero":
        node_visits = tree.node_visits.gather(1, node[:, None]).float()
        pb_c = config.pb_c_init + torch.log((node_visits + config.pb_c_base + 1.0) / config.pb_c_base)
        policy_score = torch.sqrt(node_visits) * pb_c * tree.edge_policy.gather(1, edges) / (visits + 1)
        return masked_argmax(qvalues + policy_score, invalid)
    if at_root:
        table = tree.considered_visits
        valid = tree.num_actions if invalid is None else (~invalid).sum(-1)
        num_considered = torch.clamp(torch.as_tensor(valid, device=node.device), max=config.max_num_considered_actions)
        simulation_index = visits.sum(-1)  # at the root, the simulations done so far (mctx reads it so too)
        considered_visit = table[num_considered, simulation_index].reshape(-1, 1).expand(tree.batch_size, 1)
        scores = score_considered(considered_visit, tree.gumbel, prior_logits, qvalues, visits)
        return masked_argmax(scores, invalid)
    probs = torch.softmax(prior_logits + qvalues, dim=-1)
    return (probs - visits / (1 + visits.sum(-1, keepdim=True))).argmax(-1)


def select_discrete(tree: Tree, config: DiscreteSearchConfig, simulation: int, level=None) -> Selection:
    """Selection of simulation s (mctx ``simulate``): from the root, take the rule's action and descend
    while the child exists and the depth is below max_depth.

    Returns the Selection ([B] int64): ``parent`` and ``slot`` = the last (node, action) taken,
    ``root_slot`` the root's action, ``depth`` the edges walked, ``edge`` the flat edge of (parent, slot)
    and ``node`` the node that simulation s writes: the existing child at the depth cutoff, else s+1.
    ``level``: the function that takes one step (``descend``; the inductor backend passes it compiled).
    """
    level = level or descend
    batch = tree.batch_size
    node = torch.zeros(batch, dtype=_LINK, device=tree.edge_child.device)
    going = torch.ones(batch, dtype=torch.bool, device=node.device)
    node, going, parent, action, depth = level(tree, config, node, going, node, node, node, True)
    root_slot = action
    for _ in range(_walk_bound(config, simulation) - 1):
        if _all_done(going):
            break
        node, going, parent, action, depth = level(tree, config, node, going, parent, action, depth, False)
    edge = parent * tree.num_actions + action
    existing = tree.edge_child.gather(1, edge[:, None])[:, 0]
    return Selection(parent=parent, slot=action, root_slot=root_slot, depth=depth, edge=edge,
                     node=torch.where(existing >= 0, existing, simulation + 1))


def descend(tree: Tree, config: DiscreteSearchConfig, node, going, parent, action, depth, at_root: bool):
    """One step of selection for the trees still ``going`` ([B] bool), all [B]: take the rule's action at
    ``node``, record (parent, action, depth), and move to the child while it exists below max_depth.
    Returns (node, going, parent, action, depth)."""
    chosen = choose_action(tree, config, node, at_root)
    parent = torch.where(going, node, parent)
    action = torch.where(going, chosen, action)
    depth = depth + going.to(depth.dtype)
    child = tree.edge_child.gather(1, (node * tree.num_actions + chosen)[:, None])[:, 0]
    going = going & (child >= 0) & (depth < config.max_depth)
    return torch.where(going, child, node), going, parent, action, depth


def expand_discrete(tree: Tree, selection: Selection, reward: torch.Tensor, discount: torch.Tensor,
                    prior_logits: torch.Tensor, value: torch.Tensor, embedding: torch.Tensor) -> None:
    """Writes the model's outputs for (parent, action) into ``selection.node`` (mctx ``expand``), in place.

    reward, discount, value: [B] float; prior_logits: [B, A] float; embedding: [B, ...].
    """
    node = selection.node
    index = node[:, None]
    _write_node(tree, node, prior_logits, value, embedding)
    tree.edge_child.scatter_(1, selection.edge[:, None], index)
    tree.node_reward.scatter_(1, index, reward.float()[:, None])
    tree.node_discount.scatter_(1, index, discount.float()[:, None])
    tree.node_parent.scatter_(1, index, selection.parent[:, None])
    tree.node_slot.scatter_(1, index, selection.slot[:, None])


def backup_discrete(tree: Tree, config: DiscreteSearchConfig, simulation: int, selection: Selection) -> None:
    """mctx ``backward`` from ``selection.node`` to the root, in place: G = the node's value; at each step
    G = r + discount · G of the edge climbed, and the parent's mean becomes (V · N + G) / (N + 1), N + 1."""
    index = selection.node
    value = tree.node_value.gather(1, index[:, None])[:, 0]
    going = index != 0
    for _ in range(_walk_bound(config, simulation)):
        at = index[:, None]
        parent = tree.node_parent.gather(1, at).clamp(min=0)
        count = tree.node_visits.gather(1, parent)
        reward = tree.node_reward.gather(1, at)[:, 0]
        discount = tree.node_discount.gather(1, at)[:, 0]
        value = torch.where(going, reward + discount * value, value)
        mean = tree.node_value.gather(1, parent)
        updated = (mean[:, 0] * count[:, 0] + value) / (count[:, 0] + 1.0)
        tree.node_value.scatter_(1, parent, torch.where(going[:, None], updated[:, None], mean))
        tree.node_visits.scatter_(1, parent, torch.where(going[:, None], count + 1, count))
        index = torch.where(going, parent[:, 0], index)
        going = going & (index != 0)
        if _all_done(going):
            break
