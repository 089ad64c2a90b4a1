"""Pure-torch reference of every search operation: vectorised over trees, any device, the CPU path.

Each function is the twin of a Triton kernel in ``triton_ops.py`` and evaluates search.md's formulas
in the order written there, in float32. Loops run over tree *depth* (bounded by the static halving
schedule), never over trees, and nothing here reads a tensor back to the host.
"""
from __future__ import annotations

import torch

from .config import SearchConfig, halving_schedule
from .tree import Selection, Tree, rank_descending

__all__ = ["select", "backup", "sequential_halving", "sigma_logits", "root_scores"]


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, X], index [B, ...] int -> values at index, per row."""
    flat = index.reshape(index.shape[0], -1).long()
    return values.gather(1, flat).reshape(index.shape)


def sigma_logits(tree: Tree, config: SearchConfig, node: torch.Tensor, edges: torch.Tensor,
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Completed-Q sigma term of node n's children (search.md "Definitions").

    Args:
      tree: the trees.
      config: discount, c_visit, c_scale, value_delta.
      node: [B] int, the node n per tree.
      edges: [B, S] int, n's child edges (all of its slots).
      valid: optional [B, S] bool, which of the S columns are real slots (default: all).

    Returns:
      sigma: [B, S] float32, sigma(q_hat(Q~(n, a)); n).
      child_visits: [B, S] float32, N(c_a) (0 for a slot without a child).
      completed_q: [B, S] float32, Q~(n, a).
    """
    child = _gather(tree.edge_child, edges)
    exists = child >= 0
    if valid is not None:
        exists = exists & valid
    child_node = child.clamp(min=0)
    child_visits = torch.where(exists, _gather(tree.node_visits, child_node), 0).float()
    child_value = _gather(tree.node_value_sum, child_node) / child_visits.clamp(min=1.0)
    q = _gather(tree.node_reward, child_node) + config.discount * child_value

    prior = _gather(tree.edge_prior, edges)
    if valid is not None:
        prior = prior.masked_fill(~valid, float("-inf"))
    pi = torch.softmax(prior, dim=1)
    pi_expanded = torch.where(exists, pi, 0.0)
    pi_sum = pi_expanded.sum(1)
    pi_q = (pi_expanded * torch.where(exists, q, 0.0)).sum(1)
    parent_visits = _gather(tree.node_visits, node[:, None])[:, 0].float()
    parent_value = _gather(tree.node_value_sum, node[:, None])[:, 0] / parent_visits
    mixed = (parent_value + parent_visits / pi_sum.clamp(min=1e-30) * pi_q) / (1.0 + parent_visits)
    v_mix = torch.where(pi_sum < 1e-4, parent_value, mixed)
    completed_q = torch.where(exists, q, v_mix[:, None])

    lo, hi = tree.minmax_lo[:, None], tree.minmax_hi[:, None]
    span = hi - lo
    q_hat = torch.where(span > 0, (completed_q - lo) / span.clamp(min=config.value_delta), completed_q)
    q_hat = q_hat.clamp(0.0, 1.0)
    max_visits = child_visits.amax(1, keepdim=True)
    sigma = (config.c_visit + max_visits) * config.c_scale * q_hat
    return sigma, child_visits, completed_q


def _interior_slot(tree: Tree, config: SearchConfig, node: torch.Tensor) -> torch.Tensor:
    """Slot chosen at interior node n: argmax_a [pi'_a - N(c_a) / (1 + N(n))], ties to the lowest."""
    k = tree.num_child_actions
    first = tree.num_root_actions + (node.clamp(min=1) - 1) * k
    edges = first[:, None] + torch.arange(k, device=node.device, dtype=node.dtype)
    sigma, child_visits, _ = sigma_logits(tree, config, node, edges)
    pi_prime = torch.softmax(_gather(tree.edge_prior, edges) + sigma, dim=1)
    parent_visits = _gather(tree.node_visits, node[:, None]).float()
    score = pi_prime - child_visits / (1.0 + parent_visits)
    return score.argmax(1).to(node.dtype)  # argmax returns the first maximal index


def select(tree: Tree, config: SearchConfig, simulation: int) -> Selection:
    """Selection of simulation s (search.md step 1) for all trees.

    Returns the Selection ([B] int32 parent, slot, root_slot, depth) where node s+1 is attached.
    """
    schedule = halving_schedule(config.num_simulations, min(config.num_top_actions, tree.num_root_actions))
    survivors = tree.survivors[:, :schedule.survivors[simulation]]  # [B, m_cur], all valid
    child = _gather(tree.edge_child, survivors)
    visits = torch.where(child >= 0, _gather(tree.node_visits, child.clamp(min=0)), 0)
    first_fewest = visits.argmin(1, keepdim=True)  # argmin returns the first (earliest) minimum
    root_slot = survivors.gather(1, first_fewest)[:, 0]

    node = torch.zeros_like(root_slot)
    slot = root_slot
    depth = torch.ones_like(root_slot)
    below = _gather(tree.edge_child, slot[:, None])[:, 0]
    for _ in range(schedule.max_descents[simulation]):
        going = below >= 0
        node = torch.where(going, below, node)
        slot = torch.where(going, _interior_slot(tree, config, node), slot)
        depth = depth + going.to(depth.dtype)
        edge = tree.num_root_actions + (node.clamp(min=1) - 1) * tree.num_child_actions + slot
        below = torch.where(going, _gather(tree.edge_child, edge[:, None])[:, 0], below)
    return Selection(parent=node, slot=slot, root_slot=root_slot, depth=depth)


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor) -> None:
    """Backup of simulation s (search.md step 3) from node s+1 with G = leaf_value [B], in place.

    Updates W, N of every node on the path and the tree's min-max stats. Sequential halving is the
    separate step ``sequential_halving``.
    """
    schedule = halving_schedule(config.num_simulations, min(config.num_top_actions, tree.num_root_actions))
    batch = tree.batch_size
    node = torch.full((batch, 1), simulation + 1, dtype=torch.int64, device=leaf_value.device)
    value = leaf_value.float()
    active = torch.ones(batch, dtype=torch.bool, device=leaf_value.device)
    lo, hi = tree.minmax_lo, tree.minmax_hi
    for _ in range(schedule.max_descents[simulation] + 2):  # path: new node at depth <= descents + 1
        tree.node_value_sum.scatter_add_(1, node, torch.where(active, value, 0.0)[:, None])
        tree.node_visits.scatter_add_(1, node, active[:, None].to(tree.node_visits.dtype))
        value = torch.where(active, tree.node_reward.gather(1, node)[:, 0] + config.discount * value, value)
        lo = torch.where(active, torch.minimum(lo, value), lo)
        hi = torch.where(active, torch.maximum(hi, value), hi)
        parent = tree.node_parent.gather(1, node)
        active = active & (parent[:, 0] >= 0)
        node = parent.clamp(min=0).long()
    tree.minmax_lo.copy_(lo)
    tree.minmax_hi.copy_(hi)


def root_scores(tree: Tree, config: SearchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Root slot terms, each [B, K] float32: (score = g + p + sigma, pi_prime_scores = p + sigma, Q~(0, a))."""
    num_root = tree.num_root_actions
    root = torch.zeros(tree.batch_size, dtype=torch.int32, device=tree.edge_child.device)
    edges = torch.arange(num_root, dtype=torch.int32, device=root.device).expand(tree.batch_size, -1)
    sigma, _, completed_q = sigma_logits(tree, config, root, edges)
    prior = tree.edge_prior[:, :num_root]
    return tree.gumbel + prior + sigma, prior + sigma, completed_q


def sequential_halving(tree: Tree, config: SearchConfig, simulation: int) -> None:
    """Sequential halving after simulation s's backup (search.md step 4), in place.

    When the static schedule halves at s, ranks the survivors by root score (descending, ties to the
    earlier survivor) and keeps the first floor(m_cur / 2) in that order; otherwise does nothing.
    """
    schedule = halving_schedule(config.num_simulations, min(config.num_top_actions, tree.num_root_actions))
    keep, count = schedule.keep[simulation], schedule.survivors[simulation]
    if keep == 0:
        return
    survivors = tree.survivors[:, :count].long()
    score, _, _ = root_scores(tree, config)
    rank = rank_descending(score.gather(1, survivors))
    ranked = torch.empty_like(survivors).scatter_(1, rank, survivors)
    tree.survivors[:, :keep] = ranked[:, :keep].to(tree.survivors.dtype)
    tree.survivors[:, keep:count] = -1
