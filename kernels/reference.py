"""Pure-torch reference of every search operation: vectorised over trees, any device, the CPU path.

Each function is the twin of a Triton kernel in ``triton_ops.py`` and evaluates search.md's formulas
in the order written there, in float32. Loops run over tree *depth* (bounded by the static halving
schedule), never over trees, and nothing here reads a tensor back to the host.
"""
from __future__ import annotations

import torch

from .config import SearchConfig, halving_schedule
from .tree import Selection, Tree, rank_descending

__all__ = ["select", "backup", "sequential_halving", "sigma_terms", "root_scores"]


def sigma_terms(config: SearchConfig, tree: Tree, child: torch.Tensor, prior: torch.Tensor,
                parent_visits: torch.Tensor, parent_value_sum: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sigma(q_hat(Q~(n, .)); n) over all children of one node n per tree (search.md "Definitions").

    Args:
      config: discount, c_visit, c_scale, value_delta.
      tree: the trees (node statistics and min-max stats are read from it).
      child: [B, S] int, n's child node per slot, -1 where not created.
      prior: [B, S] float32, the slots' prior logits p.
      parent_visits: [B] float32, N(n).
      parent_value_sum: [B] float32, W(n).

    Returns:
      sigma: [B, S] float32, sigma(q_hat(Q~(n, a)); n).
      child_visits: [B, S] float32, N(c_a) (0 for a slot without a child).
      completed_q: [B, S] float32, Q~(n, a).
    """
    exists = child >= 0
    child_node = child.clamp(min=0).long()
    child_visits = torch.where(exists, tree.node_visits.gather(1, child_node), 0).float()
    child_value = tree.node_value_sum.gather(1, child_node) / child_visits.clamp(min=1.0)
    q = tree.node_reward.gather(1, child_node) + config.discount * child_value

    pi_expanded = torch.where(exists, torch.softmax(prior, dim=1), 0.0)
    pi_sum = pi_expanded.sum(1)
    pi_q = (pi_expanded * torch.where(exists, q, 0.0)).sum(1)
    parent_value = parent_value_sum / parent_visits
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


def _interior_step(tree: Tree, config: SearchConfig, node: torch.Tensor,
                   slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At interior node n (per tree; slots = arange(k)): the slot argmax_a [pi'_a - N(c_a) / (1 + N(n))]
    (ties to the lowest) and the child behind it (-1 if not created). Both [B] int64."""
    edges = (tree.num_root_actions + (node.clamp(min=1) - 1) * tree.num_child_actions)[:, None] + slots
    child = tree.edge_child.gather(1, edges)
    prior = tree.edge_prior.gather(1, edges)
    parent_visits = tree.node_visits.gather(1, node[:, None])[:, 0].float()
    parent_value_sum = tree.node_value_sum.gather(1, node[:, None])[:, 0]
    sigma, child_visits, _ = sigma_terms(config, tree, child, prior, parent_visits, parent_value_sum)
    pi_prime = torch.softmax(prior + sigma, dim=1)
    score = pi_prime - child_visits / (1.0 + parent_visits[:, None])
    slot = score.argmax(1, keepdim=True)  # argmax returns the first maximal index
    return slot[:, 0], child.gather(1, slot)[:, 0].long()


def select(tree: Tree, config: SearchConfig, simulation: int) -> Selection:
    """Selection of simulation s (search.md step 1) for all trees.

    Returns the Selection ([B] int32 parent, slot, root_slot, depth) where node s+1 is attached.
    """
    schedule = halving_schedule(config.num_simulations, min(config.num_top_actions, tree.num_root_actions))
    survivors = tree.survivors[:, :schedule.survivors[simulation]].long()  # [B, m_cur], all valid
    child = tree.edge_child.gather(1, survivors)
    visits = torch.where(child >= 0, tree.node_visits.gather(1, child.clamp(min=0).long()), 0)
    first_fewest = visits.argmin(1, keepdim=True)  # argmin returns the first (earliest) minimum
    root_slot = survivors.gather(1, first_fewest)[:, 0].to(tree.survivors.dtype)

    node = torch.zeros_like(root_slot, dtype=torch.int64)
    slot = root_slot.long()
    depth = torch.ones_like(root_slot)
    below = tree.edge_child.gather(1, slot[:, None])[:, 0].long()
    slots = torch.arange(tree.num_child_actions, device=node.device)
    for _ in range(schedule.max_descents[simulation]):
        going = below >= 0
        node = torch.where(going, below, node)
        chosen, child = _interior_step(tree, config, node, slots)
        slot = torch.where(going, chosen, slot)
        depth = depth + going.to(depth.dtype)
        below = torch.where(going, child, below)
    return Selection(parent=node.to(root_slot.dtype), slot=slot.to(root_slot.dtype), root_slot=root_slot,
                     depth=depth)


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor) -> None:
    """Backup of simulation s (search.md step 3) from node s+1 with G = leaf_value [B], in place.

    Updates W, N of every node on the path and the tree's min-max stats. Sequential halving is the
    separate step ``sequential_halving``. The path is collected first (parent links), then G runs
    up it leaf first exactly as written (W += G; G = r + gamma * G), and W, N and the stats are
    updated for the whole path at once.
    """
    schedule = halving_schedule(config.num_simulations, min(config.num_top_actions, tree.num_root_actions))
    length = schedule.max_descents[simulation] + 2  # nodes on the path: the new node is at depth <= descents + 1
    path = [torch.full((tree.batch_size, 1), simulation + 1, dtype=torch.int64, device=leaf_value.device)]
    for _ in range(length - 1):  # past the root the path continues with -1
        path.append(tree.node_parent.gather(1, path[-1].clamp(min=0)).long())
    path = torch.cat(path, 1)  # [B, length], leaf first
    on_path = path >= 0
    node = path.clamp(min=0)
    reward = tree.node_reward.gather(1, node)  # r(root) = 0 also pads past the root
    value = leaf_value.float()
    added, backed = [], []
    for step in range(length):
        added.append(value)
        value = reward[:, step] + config.discount * value
        backed.append(value)
    added, backed = torch.stack(added, 1), torch.stack(backed, 1)
    tree.node_value_sum.scatter_add_(1, node, torch.where(on_path, added, 0.0))  # past the root: root += 0
    tree.node_visits.scatter_add_(1, node, on_path.to(tree.node_visits.dtype))
    torch.minimum(tree.minmax_lo, torch.where(on_path, backed, float("inf")).amin(1), out=tree.minmax_lo)
    torch.maximum(tree.minmax_hi, torch.where(on_path, backed, float("-inf")).amax(1), out=tree.minmax_hi)


def root_scores(tree: Tree, config: SearchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Root slot terms, each [B, K] float32: (score = g + p + sigma, pi_prime_scores = p + sigma, Q~(0, a))."""
    num_root = tree.num_root_actions
    prior = tree.edge_prior[:, :num_root]
    sigma, _, completed_q = sigma_terms(config, tree, tree.edge_child[:, :num_root], prior,
                                        tree.node_visits[:, 0].float(), tree.node_value_sum[:, 0])
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
