"""Pure-torch reference of every search operation: vectorised over trees, any device, the CPU path.

Each function is the twin of a Triton kernel in ``triton_ops.py`` and evaluates search.md's formulas
in the order written there, in float32. Loops run over tree *depth* (bounded by the static halving
schedule), never over trees, and nothing here reads a tensor back to the host.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import SearchConfig
from .tree import Selection, Tree, edge_index, nan_to_lowest, rank_descending

__all__ = ["select", "backup", "sequential_halving", "sigma_terms", "minmax_normaliser", "root_scores", "record_margin"]


def minmax_normaliser(tree: Tree, config: SearchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale), each [B, 1] float32, with q_hat = clip((x - offset) / scale, 0, 1) equal to
    search.md's rule: (x - lo) / max(hi - lo, delta) when hi > lo, else x itself (offset 0, scale 1).
    The stats do not change during a selection, so this is computed once per call."""
    span = tree.minmax_hi - tree.minmax_lo
    spread = span > 0
    offset = torch.where(spread, tree.minmax_lo, 0.0)
    scale = torch.where(spread, span.clamp(min=config.value_delta), 1.0)
    return offset[:, None], scale[:, None]


def sigma_terms(config: SearchConfig, tree: Tree, child: torch.Tensor, prior: torch.Tensor, policy: torch.Tensor,
                parent_visits: torch.Tensor, parent_value_sum: torch.Tensor,
                normaliser: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sigma(q_hat(Q~(n, .)); n) over all children of one node n per tree (search.md "Definitions").

    Args:
      config: discount, c_visit, c_scale.
      tree: the trees (node statistics are read from it).
      child: [B, S] int64, n's child node per slot, -1 where not created.
      prior: [B, S] float32, the slots' prior logits p.
      policy: [B, S] float32, softmax(p) over n's slots (``Tree.edge_policy``).
      parent_visits: [B, 1] float32, N(n).
      parent_value_sum: [B, 1] float32, W(n).
      normaliser: ``minmax_normaliser(tree, config)``.

    Returns:
      sigma: [B, S] float32, sigma(q_hat(Q~(n, a)); n).
      child_visits: [B, S] float32, N(c_a) (0 for a slot without a child).
      completed_q: [B, S] float32, Q~(n, a).
    """
    missing = child < 0
    child_node = child.clamp(min=0)  # a missing child reads the root's (finite) stats, weighted 0 below
    child_visits = tree.node_visits.gather(1, child_node).float().masked_fill_(missing, 0.0)
    child_value = tree.node_value_sum.gather(1, child_node) / child_visits.clamp(min=1.0)
    q = tree.node_reward.gather(1, child_node) + config.discount * child_value

    pi_expanded = policy.masked_fill(missing, 0.0)
    pi_sum = pi_expanded.sum(1, keepdim=True)
    pi_q = (pi_expanded * q).sum(1, keepdim=True)
    parent_value = parent_value_sum / parent_visits
    mixed = (parent_value + parent_visits / pi_sum * pi_q) / (1.0 + parent_visits)  # unused where pi_sum = 0
    v_mix = torch.where(pi_sum < 1e-4, parent_value, mixed)
    completed_q = torch.where(missing, v_mix, q)

    offset, scale = normaliser
    q_hat = ((completed_q - offset) / scale).clamp_(0.0, 1.0)
    sigma = (config.c_visit + child_visits.amax(1, keepdim=True)) * config.c_scale * q_hat
    return sigma, child_visits, completed_q


def record_margin(margin: Optional[torch.Tensor], scores: torch.Tensor,
                  decides: Optional[torch.Tensor] = None) -> None:
    """Lowers ``margin`` [B] (in place) to the closest gap between any two of a decision's ``scores`` [B, S]
    (relative to max(1, |largest score|)), where ``decides`` [B] bool (None: every tree); a no-op when
    margin is None.

    A decision whose margin is within float32 rounding can go either way on hardware that rounds
    differently (``kernels.agreement``); every other one is decided the same everywhere.
    """
    if margin is None or scores.shape[1] < 2:
        return
    ordered = scores.sort(1, descending=True).values
    gap = (ordered[:, :-1] - ordered[:, 1:]).amin(1) / ordered[:, 0].abs().clamp(min=1.0)
    lowered = torch.minimum(margin, gap)
    margin.copy_(lowered if decides is None else torch.where(decides, lowered, margin))


def _interior_step(tree: Tree, config: SearchConfig, node: torch.Tensor, slots: torch.Tensor, normaliser,
                   going: torch.Tensor, margin: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """At interior node n ([B, 1] int64; slots = arange(k)): the slot argmax_a [pi'_a - N(c_a) / (1 + N(n))]
    (ties to the lowest) and the child behind it (-1 if not created), both [B, 1] int64. With ``margin``,
    records the decision's closest gap where ``going`` ([B, 1])."""
    edges = (node * tree.num_child_actions + (tree.num_root_actions - tree.num_child_actions)).clamp_(min=0) + slots
    child = tree.edge_child.gather(1, edges)
    prior = tree.edge_prior.gather(1, edges)
    parent_visits = tree.node_visits.gather(1, node).float()
    sigma, child_visits, _ = sigma_terms(config, tree, child, prior, tree.edge_policy.gather(1, edges),
                                         parent_visits, tree.node_value_sum.gather(1, node), normaliser)
    score = nan_to_lowest(torch.softmax(prior + sigma, dim=1) - child_visits / (1.0 + parent_visits))
    record_margin(margin, score, going[:, 0])
    slot = score.argmax(1, keepdim=True)  # argmax returns the first maximal index
    return slot, child.gather(1, slot)


def select(tree: Tree, config: SearchConfig, simulation: int, margin: Optional[torch.Tensor] = None) -> Selection:
    """Selection of simulation s (search.md step 1) for all trees.

    Returns the Selection ([B] int64 parent, slot, root_slot, depth, edge) where node s+1 is attached.
    margin: optional [B] float32, lowered in place by each interior decision's closest gap (``record_margin``).
    """
    schedule = config.schedule(tree.num_root_actions)
    return select_walk(tree, config, schedule.survivors[simulation], schedule.max_descents[simulation], margin)


def select_walk(tree: Tree, config: SearchConfig, num_survivors: int, descents: int,
                margin: Optional[torch.Tensor] = None) -> Selection:
    """``select`` given the schedule's survivor count and descent bound for this simulation.

    These two integers take a handful of values per search, so a compiled version of this function
    (the "inductor" backend) is specialised a handful of times, not once per simulation.
    """
    survivors = tree.survivors[:, :num_survivors]  # [B, m_cur], all valid
    child = tree.edge_child.gather(1, survivors)
    visits = tree.node_visits.gather(1, child.clamp(min=0)).masked_fill_(child < 0, 0)
    first_fewest = visits.argmin(1, keepdim=True)  # argmin returns the first (earliest) minimum

    node = torch.zeros_like(first_fewest)  # [B, 1] from here on
    slot = survivors.gather(1, first_fewest)
    root_slot = slot[:, 0]
    depth = torch.ones_like(slot)
    below = tree.edge_child.gather(1, slot)
    slots = torch.arange(tree.num_child_actions, device=node.device)
    normaliser = minmax_normaliser(tree, config) if descents else None
    for _ in range(descents):
        going = below >= 0
        node = torch.where(going, below, node)
        chosen, child = _interior_step(tree, config, node, slots, normaliser, going, margin)
        slot = torch.where(going, chosen, slot)
        depth += going
        below = torch.where(going, child, below)
    parent, slot = node[:, 0], slot[:, 0]
    return Selection(parent=parent, slot=slot, root_slot=root_slot, depth=depth[:, 0],
                     edge=edge_index(parent, slot, tree.num_root_actions, tree.num_child_actions))


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor) -> None:
    """Backup of simulation s (search.md step 3) from node s+1 with G = leaf_value [B], in place.

    Updates W, N of every node on the path and the tree's min-max stats. Sequential halving is the
    separate step ``sequential_halving``. The path is collected first (parent links), then G runs
    up it leaf first exactly as written (W += G; G = r + gamma * G), and W, N and the stats are
    updated for the whole path at once.
    """
    leaf = torch.full((tree.batch_size, 1), simulation + 1, dtype=torch.int64, device=leaf_value.device)
    # Nodes on the path: the new node is at depth <= descents + 1.
    backup_path(tree, config, leaf, config.schedule(tree.num_root_actions).max_descents[simulation] + 2, leaf_value)


def backup_path(tree: Tree, config: SearchConfig, leaf: torch.Tensor, length: int, leaf_value: torch.Tensor) -> None:
    """``backup`` from the nodes ``leaf`` ([B, 1] int64) along paths of at most ``length`` nodes."""
    path = [leaf]
    for _ in range(length - 1):  # past the root the path continues with -1
        path.append(tree.node_parent.gather(1, path[-1].clamp(min=0)))
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
    tree.minmax_lo.copy_(torch.minimum(tree.minmax_lo, torch.where(on_path, backed, float("inf")).amin(1)))
    tree.minmax_hi.copy_(torch.maximum(tree.minmax_hi, torch.where(on_path, backed, float("-inf")).amax(1)))


def root_scores(tree: Tree, config: SearchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Root slot terms, each [B, K] float32: (score = g + p + sigma, pi_prime_scores = p + sigma, Q~(0, a))."""
    num_root = tree.num_root_actions
    prior = tree.edge_prior[:, :num_root]
    sigma, _, completed_q = sigma_terms(config, tree, tree.edge_child[:, :num_root], prior,
                                        tree.edge_policy[:, :num_root], tree.node_visits[:, :1].float(),
                                        tree.node_value_sum[:, :1], minmax_normaliser(tree, config))
    return tree.gumbel + prior + sigma, prior + sigma, completed_q


def sequential_halving(tree: Tree, config: SearchConfig, simulation: int,
                       margin: Optional[torch.Tensor] = None) -> None:
    """Sequential halving after simulation s's backup (search.md step 4), in place.

    When the static schedule halves at s, ranks the survivors by root score (descending, ties to the
    earlier survivor) and keeps the first floor(m_cur / 2) in that order; otherwise does nothing.
    margin: optional [B] float32, lowered in place by the ranking's closest gap (``record_margin``).
    """
    schedule = config.schedule(tree.num_root_actions)
    keep, count = schedule.keep[simulation], schedule.survivors[simulation]
    if keep == 0:
        return
    survivors = tree.survivors[:, :count]
    score = root_scores(tree, config)[0].gather(1, survivors)
    record_margin(margin, score)
    rank = rank_descending(score)
    ranked = torch.empty_like(survivors).scatter_(1, rank, survivors)
    tree.survivors[:, :keep] = ranked[:, :keep]
    tree.survivors[:, keep:count] = -1
