"""Tree storage: a struct of arrays for B trees, allocated once per search, shared by every search.

Node 0 is the root; the leaf created at simulation s is node s+1, so a search of N simulations needs
N+1 nodes and no allocator. Child slots are stored as *edges* in one flat per-tree array: the root's
K slots are edges 0 … K-1, node n >= 1 owns edges K + (n-1)·k … K + n·k - 1. Node s+1's edges are
therefore a static slice, and every link is an index (no pointers).

Two searches use this storage. EZ-M's sampled search (``sampled_gumbel_search``): K sampled root
candidates, k per interior node, value sums W, a survivor list and min-max statistics. mctx's discrete
searches (``muzero_policy``, ``gumbel_muzero_policy``): K = k = A actions, so node n's edges are
n·A … n·A + A - 1 and the edge arrays are mctx's ``children_*`` [B, N+1, A] flattened; values are kept
as running means (mctx's ``node_values``), with raw values and per-edge discounts. Fields one search
does not use are None. The mctx-named views (``children_visits``, ``qvalues``, ``summary`` …) read
either kind.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch

from .config import SearchConfig

__all__ = ["Tree", "Selection", "SearchSummary", "init_tree", "expand", "edge_index", "rank_descending", "top_candidates",
           "nan_to_lowest"]

_LINK = torch.int64  # node, edge and slot indices: torch's index dtype, so gathers need no conversion


@dataclasses.dataclass
class Tree:
    """B search trees. Shapes: M = N+1 nodes, E = K + N·k edges, K root slots, A action dims.

    Every field is a tensor on the search device and is updated in place, so a captured search loop
    keeps the same storage.
    """

    node_visits: torch.Tensor  # [B, M] int32: N(n)
    node_value_sum: Optional[torch.Tensor]  # [B, M] float32: W(n) (sampled search; None in a discrete tree)
    node_reward: torch.Tensor  # [B, M] float32: r(n), reward of the edge into n (0 at the root)
    node_discount: torch.Tensor  # [B, M] float32: discount of the edge into n (sampled: SearchConfig.discount)
    node_parent: torch.Tensor  # [B, M] int64: parent node, -1 for the root and unused nodes
    node_slot: torch.Tensor  # [B, M] int64: slot of n in its parent, -1 for the root and unused nodes
    edge_child: torch.Tensor  # [B, E] int64: child node of the slot, -1 while not created
    edge_prior: torch.Tensor  # [B, E] float32: prior logit p of the slot
    edge_policy: torch.Tensor  # [B, E] float32: softmax(p) over the slot's node, written at expansion
    edge_action: Optional[torch.Tensor]  # [B, E, A]: sampled action of the slot (None in a discrete tree)
    gumbel: torch.Tensor  # [B, K] float32: Gumbel noise g of the root slots
    survivors: Optional[torch.Tensor]  # [B, K] int64: surviving root slots in order, -1 padded (sampled)
    minmax_lo: Optional[torch.Tensor]  # [B] float32: smallest backed-up value seen (+inf before any) (sampled)
    minmax_hi: Optional[torch.Tensor]  # [B] float32: largest backed-up value seen (-inf before any) (sampled)
    num_root_actions: int  # K
    num_child_actions: int  # k
    # Discrete (mctx) trees only:
    node_value: Optional[torch.Tensor] = None  # [B, M] float32: running mean value (mctx node_values)
    node_raw_value: Optional[torch.Tensor] = None  # [B, M] float32: the model's value at the last expansion
    root_invalid: Optional[torch.Tensor] = None  # [B, A] bool: invalid root actions (mctx root_invalid_actions)
    considered_visits: Optional[torch.Tensor] = None  # [m+1, N] int32: gumbel_muzero's considered-visits table
    # Both:
    embeddings: Optional[torch.Tensor] = None  # [B, M, ...]: latent of every node (root at 0)

    @property
    def batch_size(self) -> int:
        return self.node_visits.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.node_visits.shape[1]

    @property
    def num_edges(self) -> int:
        return self.edge_child.shape[1]

    # mctx's names, for trees of either search. "children" views are [B, M, A] (discrete trees, K = k = A).

    @property
    def num_actions(self) -> int:
        """A = K: actions (root slots) per node."""
        return self.num_root_actions

    @property
    def num_simulations(self) -> int:
        return self.num_nodes - 1

    @property
    def node_values(self) -> torch.Tensor:
        """[B, M] float32: mean value of every node (0 for unused nodes)."""
        if self.node_value is not None:
            return self.node_value
        return self.node_value_sum / self.node_visits.clamp(min=1).float()

    @property
    def raw_values(self) -> Optional[torch.Tensor]:
        """[B, M] float32: the model's value of every node (discrete trees)."""
        return self.node_raw_value

    @property
    def parents(self) -> torch.Tensor:
        return self.node_parent

    @property
    def action_from_parent(self) -> torch.Tensor:
        return self.node_slot

    def _by_node(self, edge_values: torch.Tensor) -> torch.Tensor:
        if self.num_root_actions != self.num_child_actions:
            raise ValueError("children_* views need K = k (a discrete tree); use the edge_* arrays of a sampled tree")
        return edge_values.view(self.batch_size, self.num_nodes, self.num_actions)

    @property
    def children_index(self) -> torch.Tensor:
        """[B, M, A] int64: child node of every (node, action), -1 where not expanded."""
        return self._by_node(self.edge_child)

    @property
    def children_prior_logits(self) -> torch.Tensor:
        """[B, M, A] float32."""
        return self._by_node(self.edge_prior)

    def _child_stat(self, node_stat: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        """node_stat [B, M] read at child ([B, ...] node indices, -1 = none, read as 0)."""
        flat = child.reshape(self.batch_size, -1)
        out = node_stat.gather(1, flat.clamp(min=0)).masked_fill_(flat < 0, 0)
        return out.view(child.shape)

    @property
    def children_visits(self) -> torch.Tensor:
        """[B, M, A] int32: visits of every (node, action) edge."""
        return self._child_stat(self.node_visits, self.children_index)

    @property
    def children_values(self) -> torch.Tensor:
        """[B, M, A] float32: mean value of every child (0 where not expanded)."""
        return self._child_stat(self.node_values, self.children_index)

    @property
    def children_rewards(self) -> torch.Tensor:
        """[B, M, A] float32."""
        return self._child_stat(self.node_reward, self.children_index)

    @property
    def children_discounts(self) -> torch.Tensor:
        """[B, M, A] float32."""
        return self._child_stat(self.node_discount, self.children_index)

    def edges_of(self, node: torch.Tensor) -> torch.Tensor:
        """[B, A] int64: the flat edge indices of the actions of ``node`` ([B] int64) (in a sampled tree, K
        root slots: the root only)."""
        first = edge_index(node, torch.zeros_like(node), self.num_root_actions, self.num_child_actions)
        return first[:, None] + torch.arange(self.num_root_actions, device=node.device)

    def children_of(self, node: torch.Tensor) -> torch.Tensor:
        """[B, A] int64: the child of each action of ``node`` ([B] int64), -1 where not expanded."""
        return self.edge_child.gather(1, self.edges_of(node))

    def children_statistics(self, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(child [B, A] int64 (-1 = not expanded), Q [B, A] float32 = r + discount · value (0 where not
        expanded), visits [B, A] int32) of the children of ``node`` ([B] int64), in one pass of gathers."""
        child = self.children_of(node)
        exists = child >= 0
        at = child.clamp(min=0)
        q = self.node_reward.gather(1, at) + self.node_discount.gather(1, at) * self.node_values.gather(1, at)
        return child, torch.where(exists, q, 0.0), self.node_visits.gather(1, at).masked_fill_(~exists, 0)

    def qvalues(self, node: torch.Tensor) -> torch.Tensor:
        """[B, A] float32: r + discount · value of each child of ``node`` ([B] int64); 0 where not expanded
        (mctx ``Tree.qvalues``)."""
        return self.children_statistics(node)[1]

    def summary(self) -> "SearchSummary":
        """Root statistics as mctx's ``Tree.summary()``: visit counts and probabilities, value, Q-values."""
        root = torch.zeros(self.batch_size, dtype=torch.int64, device=self.node_visits.device)
        value = self.node_values[:, 0]
        _, qvalues, visits = self.children_statistics(root)
        visit_counts = visits.to(value.dtype)
        total = visit_counts.sum(-1, keepdim=True)
        visit_probs = torch.where(total > 0, visit_counts / total.clamp(min=1), 1.0 / self.num_actions)
        return SearchSummary(visit_counts=visit_counts, visit_probs=visit_probs, value=value, qvalues=qvalues)


class SearchSummary(NamedTuple):
    """Root statistics of B trees with A actions (mctx ``SearchSummary``)."""

    visit_counts: torch.Tensor  # [B, A] float32: visits of the root's children
    visit_probs: torch.Tensor  # [B, A] float32: visit_counts normalised (uniform when none)
    value: torch.Tensor  # [B] float32: the root's mean value
    qvalues: torch.Tensor  # [B, A] float32: r + discount · value of each root child (0 where not expanded)


@dataclasses.dataclass
class Selection:
    """Where simulation s attaches its new leaf, per tree (all [B] int64)."""

    parent: torch.Tensor  # node whose slot was taken; the new node s+1 becomes its child
    slot: torch.Tensor  # the slot of `parent` that was taken
    root_slot: torch.Tensor  # the root slot on the selected path
    depth: torch.Tensor  # edges from the root to the new node
    edge: torch.Tensor  # flat edge index of (parent, slot): where the new node is linked
    node: Optional[torch.Tensor] = None  # discrete search: the node written (s+1, or the existing child at max_depth)


def edge_index(node: torch.Tensor, slot: torch.Tensor, num_root_actions: int,
               num_child_actions: int) -> torch.Tensor:
    """Flat edge index of (node, slot); node, slot: [...] int -> [...] int (same dtype)."""
    first = torch.where(node > 0, node * num_child_actions + (num_root_actions - num_child_actions), 0)
    return first + slot


def nan_to_lowest(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with NaN replaced by -inf: the order every ranking and argmax of the search uses."""
    return torch.where(torch.isnan(scores), float("-inf"), scores)


def top_candidates(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` largest keys per row, largest first, ties to the lower position.

    keys: [B, L] float; returns [B, count] int64. Ranks are counted pairwise (no sort), so the order
    is the defined one on every device and equal to the Triton kernels' ranking.
    """
    rank = rank_descending(keys)
    order = torch.empty_like(rank)
    order.scatter_(1, rank, torch.arange(keys.shape[1], device=keys.device, dtype=rank.dtype).expand_as(rank))
    return order[:, :count]


def rank_descending(keys: torch.Tensor) -> torch.Tensor:
    """Rank of each key within its row: 0 = largest; ties to the lower position. [B, L] -> [B, L] int64.

    NaN ranks as -inf (last, among the -inf keys by position), so the ranks are always a permutation: a
    tree with a NaN score can never index outside its candidates (the Triton kernels do the same).
    """
    keys = nan_to_lowest(keys)
    length = keys.shape[1]
    pos = torch.arange(length, device=keys.device)
    before = keys[:, None, :] > keys[:, :, None]  # [B, i, j]: key j beats key i
    tied_earlier = (keys[:, None, :] == keys[:, :, None]) & (pos[None, :] < pos[:, None])[None]
    return (before | tied_earlier).sum(-1)


def init_tree(root_value: torch.Tensor, root_actions: torch.Tensor, root_prior_logits: torch.Tensor,
              gumbel: torch.Tensor, config: SearchConfig) -> Tree:
    """Allocates B trees with the root expanded (search.md "Initial state").

    Args:
      root_value: [B] float, v0.
      root_actions: [B, K, A] float, the root candidates.
      root_prior_logits: [B, K] float, p at the root.
      gumbel: [B, K] float, g.
      config: the search configuration (N, m0, k).

    Returns a Tree with N(0) = 1, W(0) = v0 and the top m = min(m0, K) root slots by g + p as survivors.
    """
    batch, num_root, _ = root_actions.shape
    n, k = config.num_simulations, config.num_child_actions
    device = root_actions.device
    num_nodes, num_edges = n + 1, num_root + n * k
    m = min(config.num_top_actions, num_root)

    node_visits = torch.zeros(batch, num_nodes, dtype=torch.int32, device=device)
    node_visits[:, 0] = 1
    node_value_sum = torch.zeros(batch, num_nodes, dtype=torch.float32, device=device)
    node_value_sum[:, 0] = root_value.float()
    edge_prior = torch.zeros(batch, num_edges, dtype=torch.float32, device=device)
    edge_prior[:, :num_root] = root_prior_logits.float()
    edge_policy = torch.zeros(batch, num_edges, dtype=torch.float32, device=device)
    edge_policy[:, :num_root] = torch.softmax(root_prior_logits.float(), dim=1)  # contiguous: the fast kernel
    edge_action = root_actions.new_zeros(batch, num_edges, root_actions.shape[2])
    edge_action[:, :num_root] = root_actions
    gumbel = gumbel.float()
    survivors = torch.full((batch, num_root), -1, dtype=_LINK, device=device)
    survivors[:, :m] = top_candidates(gumbel + edge_prior[:, :num_root], m)
    return Tree(
        node_visits=node_visits,
        node_value_sum=node_value_sum,
        node_reward=torch.zeros(batch, num_nodes, dtype=torch.float32, device=device),
        node_discount=torch.full((batch, num_nodes), config.discount, dtype=torch.float32, device=device),
        node_parent=torch.full((batch, num_nodes), -1, dtype=_LINK, device=device),
        node_slot=torch.full((batch, num_nodes), -1, dtype=_LINK, device=device),
        edge_child=torch.full((batch, num_edges), -1, dtype=_LINK, device=device),
        edge_prior=edge_prior,
        edge_policy=edge_policy,
        edge_action=edge_action,
        gumbel=gumbel.contiguous(),
        survivors=survivors,
        minmax_lo=torch.full((batch,), float("inf"), dtype=torch.float32, device=device),
        minmax_hi=torch.full((batch,), float("-inf"), dtype=torch.float32, device=device),
        num_root_actions=num_root,
        num_child_actions=k,
    )


def expand(tree: Tree, simulation: int, selection: Selection, reward: torch.Tensor,
           child_actions: torch.Tensor, child_prior_logits: torch.Tensor) -> None:
    """Writes node s+1 under ``selection`` (search.md step 2), in place; the same on every device.

    Args:
      tree: the trees.
      simulation: s, so the new node is s+1.
      selection: where to attach it ([B] parent and slot).
      reward: [B] float, r(s+1).
      child_actions: [B, k, A] float, actions of the new node's k slots.
      child_prior_logits: [B, k] float, their prior logits.
    """
    node, k = simulation + 1, tree.num_child_actions
    first = tree.num_root_actions + simulation * k  # node s+1's edges: a static slice
    tree.node_reward[:, node] = reward
    tree.node_parent[:, node] = selection.parent
    tree.node_slot[:, node] = selection.slot
    tree.edge_prior[:, first:first + k] = child_prior_logits
    # Softmax of the contiguous input (the same float32 values as the slice just written): torch's kernel
    # for a strided [B, k] slice was ~5x slower.
    tree.edge_policy[:, first:first + k] = torch.softmax(child_prior_logits.float(), dim=1)
    tree.edge_action[:, first:first + k] = child_actions
    tree.edge_child.scatter_(1, selection.edge[:, None], node)
