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

__all__ = ["select", "backup", "sequential_halving", "available", "unavailable_reason", "KERNELS"]

SELECT_BLOCK_B = 32  # trees per program in select/backup: one tree per lane of a warp
SELECT_WARPS = 1  # backup; select scales this with the root tile (see launch_params)
HALVE_ELEMENTS = 2048  # trees x K x K ranking tile of one halving program


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


KERNELS = ("_select_kernel", "_backup_kernel", "_halve_kernel")
"""Names of the Triton kernels in this module (AOT-compiled for sm_90 in CI)."""
