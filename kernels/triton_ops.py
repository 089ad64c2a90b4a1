"""Triton kernels for selection, backup (+ min-max) and sequential halving, and their launchers.

Twins of ``reference.py``. One program owns a block of whole trees (BLOCK_B lanes, one tree per
lane), so a tree is never touched by two programs: no atomics, and every loop runs over depth with
per-lane masks. Tree arrays are row-major [B, X], so a tree's row is one contiguous span of
memory; lanes gather their own node/edge records with computed offsets.
"""
from __future__ import annotations

import functools
import os

import torch

from .config import SearchConfig
from .tree import Selection, Tree

try:  # triton is a Linux-only dependency; the torch reference works without it
    import triton
    import triton.language as tl

    _IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - exercised only where triton is missing
    triton = None
    _IMPORT_ERROR = error

__all__ = ["select", "backup", "sequential_halving", "select_discrete", "backup_discrete", "available",
           "unavailable_reason", "KERNELS"]

SELECT_BLOCK_B = 32  # trees per program in select/backup: one tree per lane of a warp
SELECT_WARPS = 1  # backup; select scales this with the root tile (see launch_params)
HALVE_ELEMENTS = 2048  # trees x K x K ranking tile of one halving program
DISCRETE_ELEMENTS = 512  # trees x A tile of one discrete selection program (no spills on sm_90, tests/test_kernels_aot)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return triton is not None and (device.type == "cuda" or (_interpreting() and device.type == "cpu"))


def unavailable_reason() -> str:
    if triton is None:
        return f"triton could not be imported ({_IMPORT_ERROR})"
    return "TRITON_INTERPRET is not 1" if not _interpreting() else "the device is neither CUDA nor CPU"


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def launch_params(num_root: int, num_child: int) -> dict:
    """Per kernel: (tile constexprs, num_warps) for K root and k child slots. The launchers and the
    AOT check (``aot.compile_kernels``) both use this, so what CI compiles is what runs."""
    block_k, block_c = _pow2(num_root), _pow2(num_child)
    return {
        # One tree per lane; warps grow with the [BLOCK_B, BLOCK_K] root tile (one per 512 elements).
        "_select_kernel": (dict(BLOCK_B=SELECT_BLOCK_B, BLOCK_K=block_k, BLOCK_C=block_c),
                           max(1, min(8, SELECT_BLOCK_B * block_k // 512))),
        # Always a full warp of lanes, even for B < 32: a tree's read-modify-write of W and N is then
        # done by exactly one thread (no replicated lanes), with no atomics.
        "_backup_kernel": (dict(BLOCK_B=SELECT_BLOCK_B), SELECT_WARPS),
        "_halve_kernel": (dict(BLOCK_B=max(1, HALVE_ELEMENTS // (block_k * block_k)), BLOCK_K=block_k), 4),
    }


if triton is not None:

    @triton.jit
    def _masked_softmax(logits, valid):
        """Row softmax over the valid columns of a [BB, S] tile (0 elsewhere; all-masked rows give 0)."""
        logits = tl.where(valid, logits, float("-inf"))
        row_max = tl.max(logits, 1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        unnormalised = tl.exp(logits - row_max[:, None])
        return unnormalised / tl.maximum(tl.sum(unnormalised, 1), 1e-38)[:, None]

    @triton.jit
    def _sigma_terms(
        # Tree in:
        node_visits_in, node_value_sum_in, node_reward_in,
        # Children of one node per lane:
        row_nodes,  # [BB] int: offset of the lane's tree in the node arrays
        child,  # [BB, S] int64: child node per slot, -1 = not created
        valid,  # [BB, S] bool: slot exists
        policy,  # [BB, S] float32: softmax of the prior logits over the node's slots
        parent_visits,  # [BB] float32: N(n)
        parent_value_sum,  # [BB] float32: W(n)
        lo, hi,  # [BB] float32: min-max stats
        # Config:
        discount, c_visit, c_scale, value_delta,
    ):
        """sigma(q_hat(Q~(n, .)); n), N(c_a) and Q~(n, a) for one node per lane (reference.sigma_logits)."""
        exists = valid & (child >= 0)
        offset = row_nodes[:, None] + tl.maximum(child, 0)
        child_visits = tl.load(node_visits_in + offset, mask=exists, other=0).to(tl.float32)
        child_value = tl.load(node_value_sum_in + offset, mask=exists, other=0.0) / tl.maximum(child_visits, 1.0)
        q = tl.load(node_reward_in + offset, mask=exists, other=0.0) + discount * child_value

        pi_expanded = tl.where(exists, policy, 0.0)
        pi_sum = tl.sum(pi_expanded, 1)
        pi_q = tl.sum(pi_expanded * tl.where(exists, q, 0.0), 1)
        parent_value = parent_value_sum / parent_visits
        mixed = (parent_value + parent_visits / tl.maximum(pi_sum, 1e-30) * pi_q) / (1.0 + parent_visits)
        v_mix = tl.where(pi_sum < 1e-4, parent_value, mixed)
        completed_q = tl.where(exists, q, v_mix[:, None])

        span = (hi - lo)[:, None]
        q_hat = tl.where(span > 0, (completed_q - lo[:, None]) / tl.maximum(span, value_delta), completed_q)
        q_hat = tl.minimum(tl.maximum(q_hat, 0.0), 1.0)
        max_visits = tl.max(tl.where(valid, child_visits, 0.0), 1)
        sigma = (c_visit + max_visits)[:, None] * c_scale * q_hat
        return sigma, child_visits, completed_q

    @triton.jit
    def _select_kernel(
        # Tree in:
        node_visits_in, node_value_sum_in, node_reward_in, edge_child_in, edge_prior_in, edge_policy_in,
        survivors_in, minmax_lo_in, minmax_hi_in,
        # Selection out:
        parent_out, slot_out, root_slot_out, depth_out, edge_out,
        # Sizes:
        batch, num_nodes, num_edges, num_root, num_child, num_survivors, max_descents,
        # Config:
        discount, c_visit, c_scale, value_delta,
        # Tiling:
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        tree = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = tree < batch
        row_nodes = tree * num_nodes
        row_edges = tree * num_edges

        # Root: the surviving candidate with the fewest visits, the earliest on ties.
        j = tl.arange(0, BLOCK_K)
        in_list = live[:, None] & (j[None, :] < num_survivors)
        survivor = tl.load(survivors_in + tree[:, None] * num_root + j[None, :], mask=in_list, other=0)
        root_child = tl.load(edge_child_in + row_edges[:, None] + survivor, mask=in_list, other=-1)
        visits = tl.load(node_visits_in + row_nodes[:, None] + root_child, mask=in_list & (root_child >= 0),
                         other=0)
        visits = tl.where(in_list, visits, 2147483647)
        fewest = tl.min(visits, 1)
        position = tl.min(tl.where(visits == fewest[:, None], j[None, :], BLOCK_K), 1)
        root_slot = tl.sum(tl.where(j[None, :] == position[:, None], survivor, 0), 1)

        lo = tl.load(minmax_lo_in + tree, mask=live, other=0.0)
        hi = tl.load(minmax_hi_in + tree, mask=live, other=0.0)
        c = tl.arange(0, BLOCK_C)
        slot_ok = live[:, None] & (c[None, :] < num_child)
        node = tl.zeros([BLOCK_B], dtype=tl.int64)
        slot = root_slot
        depth = tl.full([BLOCK_B], 1, dtype=tl.int64)
        below = tl.load(edge_child_in + row_edges + root_slot, mask=live, other=-1)
        for _ in range(max_descents):
            going = below >= 0
            node = tl.where(going, below, node)
            # Interior node: argmax_a [pi'_a - N(c_a) / (1 + N(n))], ties to the lowest slot.
            first = num_root + (tl.maximum(node, 1) - 1) * num_child
            edges = row_edges[:, None] + first[:, None] + c[None, :]
            mask = slot_ok & going[:, None]
            child = tl.load(edge_child_in + edges, mask=mask, other=-1)
            prior = tl.load(edge_prior_in + edges, mask=mask, other=0.0)
            policy = tl.load(edge_policy_in + edges, mask=mask, other=0.0)
            parent_visits = tl.load(node_visits_in + row_nodes + node, mask=live & going, other=1).to(tl.float32)
            parent_value_sum = tl.load(node_value_sum_in + row_nodes + node, mask=live & going, other=0.0)
            sigma, child_visits, _ = _sigma_terms(
                node_visits_in, node_value_sum_in, node_reward_in, row_nodes, child, mask, policy,
                parent_visits, parent_value_sum, lo, hi, discount, c_visit, c_scale, value_delta)
            pi_prime = _masked_softmax(prior + sigma, mask)
            score = tl.where(mask, pi_prime - child_visits / (1.0 + parent_visits)[:, None], float("-inf"))
            score = tl.where(score != score, float("-inf"), score)  # NaN ranks as -inf (tree.nan_to_lowest)
            best = tl.max(score, 1)
            chosen = tl.min(tl.where(score == best[:, None], c[None, :], BLOCK_C), 1)
            chosen = tl.minimum(chosen, num_child - 1).to(tl.int64)
            slot = tl.where(going, chosen, slot)
            depth += going.to(tl.int64)
            next_child = tl.load(edge_child_in + row_edges + first + slot, mask=live & going, other=-1)
            below = tl.where(going, next_child, below)

        tl.store(parent_out + tree, node, mask=live)
        tl.store(slot_out + tree, slot, mask=live)
        tl.store(root_slot_out + tree, root_slot, mask=live)
        tl.store(depth_out + tree, depth, mask=live)
        tl.store(edge_out + tree, tl.where(node > 0, num_root + (node - 1) * num_child, 0) + slot, mask=live)

    @triton.jit
    def _backup_kernel(
        # Tree in/out:
        node_visits_io, node_value_sum_io, minmax_lo_io, minmax_hi_io,
        # Tree in:
        node_reward_in, node_parent_in,
        # Leaf in:
        leaf_value_in,
        # Sizes:
        batch, num_nodes, leaf, path_len,
        # Config:
        discount,
        # Tiling:
        BLOCK_B: tl.constexpr,
    ):
        tree = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = tree < batch
        row_nodes = tree * num_nodes
        value = tl.load(leaf_value_in + tree, mask=live, other=0.0).to(tl.float32)
        lo = tl.load(minmax_lo_io + tree, mask=live, other=0.0)
        hi = tl.load(minmax_hi_io + tree, mask=live, other=0.0)
        node = tl.full([BLOCK_B], 0, dtype=tl.int64) + leaf
        active = live
        for _ in range(path_len):  # each lane walks its own path: distinct nodes, no hazards
            offset = row_nodes + node
            tl.store(node_value_sum_io + offset, tl.load(node_value_sum_io + offset, mask=active) + value,
                     mask=active)
            tl.store(node_visits_io + offset, tl.load(node_visits_io + offset, mask=active) + 1, mask=active)
            reward = tl.load(node_reward_in + offset, mask=active, other=0.0)
            value = tl.where(active, reward + discount * value, value)
            lo = tl.where(active, tl.minimum(lo, value), lo)
            hi = tl.where(active, tl.maximum(hi, value), hi)
            node = tl.load(node_parent_in + offset, mask=active, other=-1)
            active = active & (node >= 0)
            node = tl.maximum(node, 0)
        tl.store(minmax_lo_io + tree, lo, mask=live)
        tl.store(minmax_hi_io + tree, hi, mask=live)

    @triton.jit
    def _halve_kernel(
        # Tree in:
        node_visits_in, node_value_sum_in, node_reward_in, edge_child_in, edge_prior_in, edge_policy_in, gumbel_in,
        minmax_lo_in, minmax_hi_in,
        # Tree in/out:
        survivors_io,
        # Sizes:
        batch, num_nodes, num_edges, num_root, num_survivors, keep,
        # Config:
        discount, c_visit, c_scale, value_delta,
        # Tiling:
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        tree = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = tree < batch
        row_nodes = tree * num_nodes
        j = tl.arange(0, BLOCK_K)
        slot_ok = live[:, None] & (j[None, :] < num_root)

        # Root score g + p + sigma of every root slot.
        child = tl.load(edge_child_in + tree[:, None] * num_edges + j[None, :], mask=slot_ok, other=-1)
        prior = tl.load(edge_prior_in + tree[:, None] * num_edges + j[None, :], mask=slot_ok, other=0.0)
        policy = tl.load(edge_policy_in + tree[:, None] * num_edges + j[None, :], mask=slot_ok, other=0.0)
        gumbel = tl.load(gumbel_in + tree[:, None] * num_root + j[None, :], mask=slot_ok, other=0.0)
        root_visits = tl.load(node_visits_in + row_nodes, mask=live, other=1).to(tl.float32)
        root_value_sum = tl.load(node_value_sum_in + row_nodes, mask=live, other=0.0)
        lo = tl.load(minmax_lo_in + tree, mask=live, other=0.0)
        hi = tl.load(minmax_hi_in + tree, mask=live, other=0.0)
        sigma, _, _ = _sigma_terms(node_visits_in, node_value_sum_in, node_reward_in, row_nodes, child, slot_ok,
                                   policy, root_visits, root_value_sum, lo, hi, discount, c_visit, c_scale,
                                   value_delta)
        score = gumbel + prior + sigma  # [BB, K] by slot

        # Survivors' scores (a one-hot gather in registers), then pairwise ranks: ties to the earlier.
        in_list = live[:, None] & (j[None, :] < num_survivors)
        survivor = tl.load(survivors_io + tree[:, None] * num_root + j[None, :], mask=in_list, other=0)
        picks = survivor[:, :, None] == j[None, None, :]  # [BB, position, slot]
        score = tl.where(score != score, float("-inf"), score)  # NaN ranks as -inf (tree.nan_to_lowest)
        key = tl.max(tl.where(picks, score[:, None, :], float("-inf")), 2)  # [BB, position]
        i_pos = j[None, :, None]
        j_pos = j[None, None, :]
        beats = (key[:, None, :] > key[:, :, None]) | ((key[:, None, :] == key[:, :, None]) & (j_pos < i_pos))
        beats = beats & (j_pos < num_survivors)
        rank = tl.sum(beats.to(tl.int32), 2)  # [BB, position]
        tl.debug_barrier()  # every lane has read the survivor list before any lane rewrites it
        tl.store(survivors_io + tree[:, None] * num_root + rank, survivor, mask=in_list & (rank < keep))
        tl.store(survivors_io + tree[:, None] * num_root + j[None, :], tl.full([BLOCK_B, BLOCK_K], -1, tl.int64),
                 mask=live[:, None] & (j[None, :] >= keep) & (j[None, :] < num_survivors))


    @triton.jit
    def _discrete_node(
        # Tree in:
        node_visits_in, node_value_in, node_raw_value_in, node_reward_in, node_discount_in, edge_child_in,
        edge_prior_in, edge_policy_in,
        # One node per lane:
        row_nodes, row_edges, node, live,
        # Sizes:
        num_actions,
        BLOCK_A: tl.constexpr,
    ):
        """A node's statistics and its children's ([BB, BA] tiles; padding columns masked by ``valid``)."""
        a = tl.arange(0, BLOCK_A)
        valid = live[:, None] & (a[None, :] < num_actions)
        edges = row_edges[:, None] + node[:, None] * num_actions + a[None, :]
        child = tl.load(edge_child_in + edges, mask=valid, other=-1)
        exists = valid & (child >= 0)
        at = row_nodes[:, None] + tl.maximum(child, 0)
        visits = tl.load(node_visits_in + at, mask=exists, other=0)
        q = tl.load(node_reward_in + at, mask=exists, other=0.0) + \
            tl.load(node_discount_in + at, mask=exists, other=0.0) * tl.load(node_value_in + at, mask=exists, other=0.0)
        prior = tl.load(edge_prior_in + edges, mask=valid, other=0.0)
        policy = tl.load(edge_policy_in + edges, mask=valid, other=0.0)
        node_visits = tl.load(node_visits_in + row_nodes + node, mask=live, other=1)
        node_value = tl.load(node_value_in + row_nodes + node, mask=live, other=0.0)
        raw_value = tl.load(node_raw_value_in + row_nodes + node, mask=live, other=0.0)
        return valid, child, visits, q, prior, policy, node_visits, node_value, raw_value

    @triton.jit
    def _qtransform(q, visits, valid, prior, node_value, raw_value,
                    QTRANSFORM: tl.constexpr, RESCALE: tl.constexpr, MIXED: tl.constexpr,
                    min_value, value_range, epsilon, value_scale, maxvisit_init):
        """kernels.qtransforms in-kernel: 0 by_min_max, 1 by_parent_and_siblings, 2 completed_by_mix_value."""
        visited = valid & (visits > 0)
        occupied = tl.max(valid.to(tl.int32), 1) > 0  # lanes past the batch have no valid column: keep them finite
        if QTRANSFORM == 0:
            out = (tl.where(visited, q, min_value) - min_value) / value_range
        elif QTRANSFORM == 1:
            safe = tl.where(visited, q, node_value[:, None])
            low = tl.minimum(node_value, tl.min(tl.where(valid, safe, float("inf")), 1))
            high = tl.maximum(node_value, tl.max(tl.where(valid, safe, float("-inf")), 1))
            low, high = tl.where(occupied, low, 0.0), tl.where(occupied, high, 0.0)
            completed = tl.where(visited, q, low[:, None])
            out = (completed - low[:, None]) / tl.maximum(high - low, epsilon)[:, None]
        else:
            visits_f = visits.to(tl.float32)
            if MIXED:
                probs = tl.maximum(_masked_softmax(prior, valid), 1.1754943508222875e-38)
                sum_visits = tl.sum(tl.where(valid, visits_f, 0.0), 1)
                sum_probs = tl.sum(tl.where(visited, probs, 0.0), 1)
                weighted = tl.sum(tl.where(visited, probs * q / tl.where(visited, sum_probs[:, None], 1.0), 0.0), 1)
                value = (raw_value + sum_visits * weighted) / (sum_visits + 1.0)
            else:
                value = raw_value
            completed = tl.where(visited, q, value[:, None])
            if RESCALE:
                low = tl.where(occupied, tl.min(tl.where(valid, completed, float("inf")), 1), 0.0)
                high = tl.where(occupied, tl.max(tl.where(valid, completed, float("-inf")), 1), 0.0)
                completed = (completed - low[:, None]) / tl.maximum(high - low, epsilon)[:, None]
            max_visits = tl.max(tl.where(valid, visits_f, 0.0), 1)
            out = ((maxvisit_init + max_visits) * value_scale)[:, None] * completed
        return out

    @triton.jit
    def _first_argmax(score, valid, BLOCK_A: tl.constexpr):
        """[BB] int64: first maximal column of each row over valid columns (NaN counts as the largest,
        torch.argmax's rule; all -inf: column 0)."""
        a = tl.arange(0, BLOCK_A)
        score = tl.where(score != score, float("inf"), score)
        score = tl.where(valid, score, float("-inf"))
        best = tl.max(score, 1)
        first = tl.min(tl.where((score == best[:, None]) & valid, a[None, :], BLOCK_A), 1)
        return tl.where(first == BLOCK_A, 0, first).to(tl.int64)

    @triton.jit
    def _discrete_select_kernel(
        # Tree in:
        node_visits_in, node_value_in, node_raw_value_in, node_reward_in, node_discount_in, edge_child_in,
        edge_prior_in, edge_policy_in, root_invalid_in, gumbel_in, considered_table_in,
        # Selection out:
        parent_out, slot_out, root_slot_out, depth_out, edge_out, node_out,
        # Sizes:
        batch, num_nodes, num_actions, simulation, num_simulations, max_depth, max_considered,
        # Config:
        pb_c_init, pb_c_base, min_value, value_range, epsilon, value_scale, maxvisit_init,
        # Variant:
        RULE: tl.constexpr, QTRANSFORM: tl.constexpr, RESCALE: tl.constexpr, MIXED: tl.constexpr,
        HAS_INVALID: tl.constexpr,
        # Tiling:
        BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
    ):
        tree = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = tree < batch
        row_nodes = tree.to(tl.int64) * num_nodes
        row_edges = row_nodes * num_actions
        a = tl.arange(0, BLOCK_A)

        # Root: RULE 0 (muzero) PUCT; RULE 1 (gumbel_muzero) the considered action by g + logits + q.
        node = tl.zeros([BLOCK_B], dtype=tl.int64)
        valid, child, visits, q, prior, policy, node_visits, node_value, raw_value = _discrete_node(
            node_visits_in, node_value_in, node_raw_value_in, node_reward_in, node_discount_in, edge_child_in,
            edge_prior_in, edge_policy_in, row_nodes, row_edges, node, live, num_actions, BLOCK_A)
        qscore = _qtransform(q, visits, valid, prior, node_value, raw_value, QTRANSFORM, RESCALE, MIXED,
                             min_value, value_range, epsilon, value_scale, maxvisit_init)
        if HAS_INVALID:
            invalid = tl.load(root_invalid_in + tree[:, None] * num_actions + a[None, :], mask=valid, other=1) != 0
        else:
            invalid = a[None, :] < 0
        if RULE == 0:
            n = node_visits.to(tl.float32)
            pb_c = pb_c_init + tl.log((n + pb_c_base + 1.0) / pb_c_base)
            score = qscore + (tl.sqrt_rn(n) * pb_c)[:, None] * policy / (visits.to(tl.float32) + 1.0)
        else:
            num_valid = tl.sum((valid & ~invalid).to(tl.int32), 1)
            considered = tl.load(considered_table_in + tl.minimum(num_valid, max_considered) * num_simulations +
                                 simulation, mask=live, other=0)
            gumbel = tl.load(gumbel_in + tree[:, None] * num_actions + a[None, :], mask=valid, other=0.0)
            logits = prior - tl.where(live, tl.max(tl.where(valid, prior, float("-inf")), 1), 0.0)[:, None]
            penalty = tl.where(visits == considered[:, None], 0.0, float("-inf"))
            score = tl.maximum(gumbel + logits + qscore, -1e9) + penalty
        score = tl.where(invalid, float("-inf"), score)
        action = _first_argmax(score, valid, BLOCK_A)
        root_action = action
        parent = node
        depth = tl.full([BLOCK_B], 1, dtype=tl.int64)
        below = tl.load(edge_child_in + row_edges + action, mask=live, other=-1)
        going = live & (below >= 0) & (depth < max_depth)

        # Below the root: RULE 0 PUCT; RULE 1 argmax softmax(logits + q) - N(a) / (1 + sum N).
        while tl.max(going.to(tl.int32), 0) > 0:
            node = tl.where(going, below, node)
            valid, child, visits, q, prior, policy, node_visits, node_value, raw_value = _discrete_node(
                node_visits_in, node_value_in, node_raw_value_in, node_reward_in, node_discount_in, edge_child_in,
                edge_prior_in, edge_policy_in, row_nodes, row_edges, node, going, num_actions, BLOCK_A)
            qscore = _qtransform(q, visits, valid, prior, node_value, raw_value, QTRANSFORM, RESCALE, MIXED,
                                 min_value, value_range, epsilon, value_scale, maxvisit_init)
            visits_f = visits.to(tl.float32)
            if RULE == 0:
                n = node_visits.to(tl.float32)
                pb_c = pb_c_init + tl.log((n + pb_c_base + 1.0) / pb_c_base)
                score = qscore + (tl.sqrt_rn(n) * pb_c)[:, None] * policy / (visits_f + 1.0)
            else:
                probs = _masked_softmax(prior + qscore, valid)
                score = probs - visits_f / (1.0 + tl.sum(tl.where(valid, visits_f, 0.0), 1))[:, None]
            chosen = _first_argmax(score, valid, BLOCK_A)
            parent = tl.where(going, node, parent)
            action = tl.where(going, chosen, action)
            depth += going.to(tl.int64)
            below = tl.load(edge_child_in + row_edges + node * num_actions + chosen, mask=going, other=-1)
            going = going & (below >= 0) & (depth < max_depth)

        edge = parent * num_actions + action
        existing = tl.load(edge_child_in + row_edges + edge, mask=live, other=-1)
        tl.store(parent_out + tree, parent, mask=live)
        tl.store(slot_out + tree, action, mask=live)
        tl.store(root_slot_out + tree, root_action, mask=live)
        tl.store(depth_out + tree, depth, mask=live)
        tl.store(edge_out + tree, edge, mask=live)
        tl.store(node_out + tree, tl.where(existing >= 0, existing, simulation + 1), mask=live)

    @triton.jit
    def _discrete_backup_kernel(
        # Tree in/out:
        node_visits_io, node_value_io,
        # Tree in:
        node_reward_in, node_discount_in, node_parent_in,
        # Selection in:
        leaf_in,
        # Sizes:
        batch, num_nodes,
        # Tiling:
        BLOCK_B: tl.constexpr,
    ):
        tree = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        live = tree < batch
        row_nodes = tree.to(tl.int64) * num_nodes
        index = tl.load(leaf_in + tree, mask=live, other=0)
        value = tl.load(node_value_io + row_nodes + index, mask=live, other=0.0)
        going = live & (index != 0)
        while tl.max(going.to(tl.int32), 0) > 0:  # each lane climbs its own path: distinct nodes, no hazards
            at = row_nodes + index
            parent = tl.maximum(tl.load(node_parent_in + at, mask=going, other=0), 0)
            count = tl.load(node_visits_io + row_nodes + parent, mask=going, other=0)
            reward = tl.load(node_reward_in + at, mask=going, other=0.0)
            discount = tl.load(node_discount_in + at, mask=going, other=0.0)
            value = tl.where(going, reward + discount * value, value)
            mean = tl.load(node_value_io + row_nodes + parent, mask=going, other=0.0)
            count_f = count.to(tl.float32)
            tl.store(node_value_io + row_nodes + parent, (mean * count_f + value) / (count_f + 1.0), mask=going)
            tl.store(node_visits_io + row_nodes + parent, count + 1, mask=going)
            index = tl.where(going, parent, index)
            going = going & (index != 0)


def _check_layout(tree: Tree) -> None:
    for name in ("node_visits", "node_value_sum", "node_reward", "node_parent", "edge_child", "edge_prior",
                 "edge_policy", "gumbel", "survivors", "minmax_lo", "minmax_hi"):
        if not getattr(tree, name).is_contiguous():
            raise ValueError(f"Tree.{name} must be contiguous for the Triton kernels")


def _config_args(config: SearchConfig):
    return (float(config.discount), float(config.c_visit), float(config.c_scale), float(config.value_delta))


def select(tree: Tree, config: SearchConfig, simulation: int) -> Selection:
    """Triton twin of ``reference.select``."""
    _check_layout(tree)
    schedule = config.schedule(tree.num_root_actions)
    batch = tree.batch_size
    out = torch.empty(5, batch, dtype=torch.int64, device=tree.edge_child.device)
    tiles, warps = launch_params(tree.num_root_actions, tree.num_child_actions)["_select_kernel"]
    _select_kernel[(triton.cdiv(batch, tiles["BLOCK_B"]),)](
        tree.node_visits, tree.node_value_sum, tree.node_reward, tree.edge_child, tree.edge_prior, tree.edge_policy,
        tree.survivors, tree.minmax_lo, tree.minmax_hi,
        out[0], out[1], out[2], out[3], out[4],
        batch, tree.num_nodes, tree.num_edges, tree.num_root_actions, tree.num_child_actions,
        schedule.survivors[simulation], schedule.max_descents[simulation],
        *_config_args(config),
        **tiles, num_warps=warps, enable_fp_fusion=False)
    return Selection(parent=out[0], slot=out[1], root_slot=out[2], depth=out[3], edge=out[4])


def backup(tree: Tree, config: SearchConfig, simulation: int, leaf_value: torch.Tensor) -> None:
    """Triton twin of ``reference.backup``."""
    _check_layout(tree)
    schedule = config.schedule(tree.num_root_actions)
    batch = tree.batch_size
    tiles, warps = launch_params(tree.num_root_actions, tree.num_child_actions)["_backup_kernel"]
    _backup_kernel[(triton.cdiv(batch, tiles["BLOCK_B"]),)](
        tree.node_visits, tree.node_value_sum, tree.minmax_lo, tree.minmax_hi,
        tree.node_reward, tree.node_parent,
        leaf_value.contiguous(),
        batch, tree.num_nodes, simulation + 1, schedule.max_descents[simulation] + 2,
        float(config.discount),
        **tiles, num_warps=warps, enable_fp_fusion=False)


def sequential_halving(tree: Tree, config: SearchConfig, simulation: int) -> None:
    """Triton twin of ``reference.sequential_halving``."""
    schedule = config.schedule(tree.num_root_actions)
    keep = schedule.keep[simulation]
    if keep == 0:
        return
    _check_layout(tree)
    batch = tree.batch_size
    tiles, warps = launch_params(tree.num_root_actions, tree.num_child_actions)["_halve_kernel"]
    _halve_kernel[(triton.cdiv(batch, tiles["BLOCK_B"]),)](
        tree.node_visits, tree.node_value_sum, tree.node_reward, tree.edge_child, tree.edge_prior, tree.edge_policy,
        tree.gumbel, tree.minmax_lo, tree.minmax_hi,
        tree.survivors,
        batch, tree.num_nodes, tree.num_edges, tree.num_root_actions, schedule.survivors[simulation], keep,
        *_config_args(config),
        **tiles, num_warps=warps, enable_fp_fusion=False)


@functools.lru_cache(maxsize=None)
def discrete_launch_params(num_actions: int) -> dict:
    """Per discrete kernel: (tile constexprs, num_warps) for A actions; the variant constexprs (RULE,
    QTRANSFORM, …) come from ``discrete_kernel_params``. One tree per lane; lanes shrink as A grows so a
    program holds about 2048 (tree, action) elements."""
    block_a = _pow2(num_actions)
    block_b = max(1, min(SELECT_BLOCK_B, DISCRETE_ELEMENTS // block_a))
    return {
        # About 4 (tree, action) elements per thread: the qtransform keeps ~10 [BB, BA] tiles live.
        "_discrete_select_kernel": (dict(BLOCK_B=block_b, BLOCK_A=block_a), max(1, min(8, block_b * block_a // 128))),
        "_discrete_backup_kernel": (dict(BLOCK_B=SELECT_BLOCK_B), SELECT_WARPS),
    }


# Extra compile options per kernel, used by the launchers and the AOT check alike. Without a register cap,
# ptxas limits the discrete selection to 80-128 registers (an occupancy target) and spills 4-16 bytes in
# some variants; with maxnreg=255 it takes ~100 registers and spills nothing (sm_90, tests/test_kernels_aot).
COMPILE_OPTIONS = {"_discrete_select_kernel": dict(maxnreg=255)}

_QTRANSFORMS = ("qtransform_by_min_max", "qtransform_by_parent_and_siblings", "qtransform_completed_by_mix_value")


def discrete_kernel_params(config) -> tuple[dict, dict]:
    """(variant constexprs, float scalars) of ``_discrete_select_kernel`` for a ``DiscreteSearchConfig``.

    The qtransform must be one of ``kernels.qtransforms``' three, bare or a ``functools.partial`` of one
    (keyword arguments only); anything else has no kernel and is refused with the torch backend to use.
    """
    import inspect

    from . import qtransforms

    names = {getattr(qtransforms, name): index for index, name in enumerate(_QTRANSFORMS)}
    known = qtransforms.known_qtransform(config.qtransform)
    if known is None:
        raise ValueError(f"backend='triton' runs the qtransforms of ezm_gpu.kernels ({', '.join(_QTRANSFORMS)}), "
                         f"bare or through functools.partial with keywords; got {config.qtransform!r}: use "
                         "backend='torch'")
    function, keywords = known
    parameters = inspect.signature(function).parameters
    unknown = sorted(set(keywords) - set(parameters))
    if unknown:
        raise TypeError(f"{function.__name__} has no parameter(s) {unknown}")
    values = {name: keywords.get(name, p.default) for name, p in parameters.items() if name not in ("tree", "node")}
    missing = [name for name, value in values.items() if value is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{function.__name__} needs {missing} (functools.partial({function.__name__}, ...))")
    variant = dict(RULE=0 if config.rule == "muzero" else 1, QTRANSFORM=names[function],
                   RESCALE=bool(values.get("rescale_values", True)), MIXED=bool(values.get("use_mixed_value", True)))
    scalars = dict(pb_c_init=float(config.pb_c_init), pb_c_base=float(config.pb_c_base),
                   min_value=float(values.get("min_value", 0.0)),
                   value_range=float(values.get("max_value", 1.0) - values.get("min_value", 0.0)),
                   epsilon=float(values.get("epsilon", 1e-8)), value_scale=float(values.get("value_scale", 0.1)),
                   maxvisit_init=float(values.get("maxvisit_init", 50.0)))
    return variant, scalars


def _check_discrete_layout(tree: Tree) -> None:
    for name in ("node_visits", "node_value", "node_raw_value", "node_reward", "node_discount", "node_parent",
                 "edge_child", "edge_prior", "edge_policy", "gumbel"):
        if not getattr(tree, name).is_contiguous():
            raise ValueError(f"Tree.{name} must be contiguous for the Triton kernels")


def select_discrete(tree: Tree, config, simulation: int) -> Selection:
    """Triton twin of ``discrete.select_discrete``."""
    _check_discrete_layout(tree)
    variant, scalars = discrete_kernel_params(config)
    batch, device = tree.batch_size, tree.edge_child.device
    out = torch.empty(6, batch, dtype=torch.int64, device=device)
    tiles, warps = discrete_launch_params(tree.num_actions)["_discrete_select_kernel"]
    invalid = tree.root_invalid
    _discrete_select_kernel[(triton.cdiv(batch, tiles["BLOCK_B"]),)](
        tree.node_visits, tree.node_value, tree.node_raw_value, tree.node_reward, tree.node_discount, tree.edge_child,
        tree.edge_prior, tree.edge_policy, tree.gumbel if invalid is None else invalid, tree.gumbel,
        tree.considered_visits,
        out[0], out[1], out[2], out[3], out[4], out[5],
        batch, tree.num_nodes, tree.num_actions, simulation, config.num_simulations, config.max_depth,
        config.max_num_considered_actions,
        *scalars.values(),
        **variant, HAS_INVALID=invalid is not None,
        **tiles, num_warps=warps, enable_fp_fusion=False, **COMPILE_OPTIONS["_discrete_select_kernel"])
    return Selection(parent=out[0], slot=out[1], root_slot=out[2], depth=out[3], edge=out[4], node=out[5])


def backup_discrete(tree: Tree, config, simulation: int, selection: Selection) -> None:
    """Triton twin of ``discrete.backup_discrete``."""
    _check_discrete_layout(tree)
    batch = tree.batch_size
    tiles, warps = discrete_launch_params(tree.num_actions)["_discrete_backup_kernel"]
    _discrete_backup_kernel[(triton.cdiv(batch, tiles["BLOCK_B"]),)](
        tree.node_visits, tree.node_value,
        tree.node_reward, tree.node_discount, tree.node_parent,
        selection.node.contiguous(),
        batch, tree.num_nodes,
        **tiles, num_warps=warps, enable_fp_fusion=False)


KERNELS = ("_select_kernel", "_backup_kernel", "_halve_kernel", "_discrete_select_kernel", "_discrete_backup_kernel")
"""Names of the Triton kernels in this module (AOT-compiled for sm_90 in CI)."""
