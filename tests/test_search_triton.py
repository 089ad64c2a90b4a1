"""Triton kernels (interpreter) against the torch reference on random searches.

Both backends run in lockstep on copies of one tree with the same model; after every step the
selections, visit counts, links and survivors must be identical and the floats equal to 1e-5
relative. Cases cover N < K, N = 1, K not a power of two, ties, negative rewards and deep chains.
"""
import copy
import dataclasses

import pytest
import torch

from ezm_gpu.kernels import SearchConfig, backup, expand, init_tree, sampled_gumbel_search, select, sequential_halving
from models import LinearModel, random_roots

RTOL, ATOL = 1e-5, 1e-6


@dataclasses.dataclass
class Case:
    batch: int
    num_root: int
    num_sim: int
    num_child: int = 2
    top: int = 16
    seed: int = 0
    reward_bias: float = 0.0
    value_bias: float = 0.0
    prior_scale: float = 1.0
    quantum: float = 0.0
    gumbel: bool = True
    discount: float = 0.99


CASES = {
    "ezm_default": Case(batch=37, num_root=16, num_sim=32, prior_scale=0.0, gumbel=False),
    "n_less_than_k": Case(batch=19, num_root=12, num_sim=5, seed=1),
    "n1": Case(batch=8, num_root=7, num_sim=1, seed=2),
    "k_not_pow2_m_gt_k": Case(batch=45, num_root=11, num_sim=24, num_child=3, seed=3),
    "k5_m3": Case(batch=16, num_root=5, num_sim=14, top=3, seed=4),
    "ties_zero_priors_quantised": Case(batch=33, num_root=8, num_sim=20, prior_scale=0.0, gumbel=False,
                                       quantum=0.25, seed=5),
    "all_zero_model": Case(batch=9, num_root=6, num_sim=12, prior_scale=0.0, gumbel=False, quantum=1e6, seed=6),
    "negative_rewards": Case(batch=21, num_root=9, num_sim=18, reward_bias=-2.0, value_bias=-4.0, seed=7),
    "deep_chain": Case(batch=10, num_root=1, num_sim=20, num_child=1, top=1, seed=8),
    "two_candidates_wide_children": Case(batch=12, num_root=2, num_sim=16, num_child=5, seed=9),
    "k20_many_trees": Case(batch=70, num_root=20, num_sim=10, top=20, seed=10, discount=0.9),
}


def _assert_trees_equal(a, b, where):
    for name in ("node_visits", "node_parent", "node_slot", "edge_child", "survivors"):
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{where}: {name} differs"
    for name in ("node_value_sum", "node_reward", "edge_prior", "edge_policy", "minmax_lo", "minmax_hi"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=RTOL, atol=ATOL,
                                   msg=lambda m: f"{where}: {name}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_torch_step_by_step(name):
    case = CASES[name]
    latent, action_dim = 6, 2
    config = SearchConfig(num_simulations=case.num_sim, num_top_actions=case.top, num_child_actions=case.num_child,
                          discount=case.discount)
    model = LinearModel(latent, action_dim, case.num_child, case.seed, case.reward_bias, case.value_bias,
                        case.prior_scale, case.quantum)
    roots = random_roots(case.batch, case.num_root, latent, action_dim, model, case.seed, case.prior_scale,
                         case.gumbel)
    tree_t = init_tree(roots["root_value"], roots["root_actions"], roots["root_prior_logits"], roots["gumbel"],
                       config)
    tree_k = copy.deepcopy(tree_t)
    embeddings = torch.zeros(case.batch, case.num_sim + 1, latent)
    embeddings[:, 0] = roots["root_embedding"]
    rows = torch.arange(case.batch)
    for s in range(case.num_sim):
        sel_t = select(tree_t, config, s, backend="torch")
        sel_k = select(tree_k, config, s, backend="triton")
        for field in ("parent", "slot", "root_slot", "depth", "edge"):
            assert torch.equal(getattr(sel_t, field), getattr(sel_k, field)), f"sim {s}: selection {field}"
        first = torch.where(sel_t.parent == 0, 0, case.num_root + (sel_t.parent - 1) * case.num_child)
        # The selected slot is free: the static descent bound never stops a walk early.
        assert (tree_t.edge_child[rows, (first + sel_t.slot).long()] == -1).all(), f"sim {s}: slot taken"
        action = tree_t.edge_action[rows, (first + sel_t.slot).long()]
        nxt, reward, value, children, logits = model(embeddings[rows, sel_t.parent.long()], action)
        embeddings[:, s + 1] = nxt
        for tree, sel in ((tree_t, sel_t), (tree_k, sel_k)):
            expand(tree, s, sel, reward, children, logits)
        backup(tree_t, config, s, value, backend="torch")
        backup(tree_k, config, s, value, backend="triton")
        _assert_trees_equal(tree_t, tree_k, f"sim {s} after backup")
        sequential_halving(tree_t, config, s, backend="torch")
        sequential_halving(tree_k, config, s, backend="triton")
        _assert_trees_equal(tree_t, tree_k, f"sim {s} after halving")
    # The search exercised what the case is about.
    assert int(tree_t.node_visits[:, 0].min()) == case.num_sim + 1
    if name == "deep_chain":
        assert int(tree_t.node_parent[:, -1].min()) == case.num_sim - 1  # node N hangs under node N-1


def test_full_search_same_outputs_on_both_backends():
    model = LinearModel(5, 3, 2, seed=11)
    roots = random_roots(24, 10, 5, 3, model, seed=11)
    config = SearchConfig(num_simulations=12, num_top_actions=8)
    out_t = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="torch")
    out_k = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="triton")
    for name in ("action_index", "visit_counts", "considered", "survivors"):
        assert torch.equal(getattr(out_t, name), getattr(out_k, name)), name
    assert torch.equal(out_t.action, out_k.action)
    for name in ("root_value", "completed_q", "action_weights", "pi_prime_scores"):
        torch.testing.assert_close(getattr(out_t, name), getattr(out_k, name), rtol=RTOL, atol=ATOL)
    assert int(out_t.visit_counts.sum(1).min()) == 12


@pytest.mark.parametrize("seed", range(8))
def test_triton_matches_torch_on_random_configurations(seed):
    """Random B, K, k, N, m0, value scales, priors, noise and ties: whole searches, both backends."""
    g = torch.Generator().manual_seed(1000 + seed)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=g))

    batch, num_root, num_child, num_sim = draw(1, 48), draw(1, 20), draw(1, 4), draw(1, 24)
    top = draw(1, num_root + 2)
    quantum = [0.0, 0.5][draw(0, 1)]
    model = LinearModel(4, 2, num_child, seed, reward_bias=draw(-2, 2) * 0.5, value_bias=draw(-2, 2),
                        prior_scale=draw(0, 2) * 0.5, quantum=quantum)
    roots = random_roots(batch, num_root, 4, 2, model, seed, prior_scale=draw(0, 2) * 0.5, gumbel=bool(draw(0, 1)))
    config = SearchConfig(num_simulations=num_sim, num_top_actions=top, num_child_actions=num_child,
                          discount=[0.99, 0.9, 1.0][draw(0, 2)])
    out_t = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="torch")
    out_k = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="triton")
    where = f"B={batch} K={num_root} k={num_child} N={num_sim} m0={top}"
    for name in ("action_index", "visit_counts", "considered", "survivors"):
        assert torch.equal(getattr(out_t, name), getattr(out_k, name)), f"{where}: {name}"
    _assert_trees_equal(out_t.tree, out_k.tree, where)
    for name in ("root_value", "completed_q", "action_weights", "pi_prime_scores"):
        torch.testing.assert_close(getattr(out_t, name), getattr(out_k, name), rtol=RTOL, atol=ATOL)
