"""The discrete policies' API: validation before any work, reproducible randomness, backends that agree,
no host reads in the walk off CPU, and the shared tree's mctx views on EZ-M's sampled trees too."""
from __future__ import annotations

import functools

import pytest
import torch

from ezm_gpu import kernels
from ezm_gpu.kernels import discrete
from host_sync import forbid_host_sync

B, A = 6, 5


def _model(num_actions=A, discount=-1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4 + num_actions, 4, generator=g)
    wp = torch.randn(4, num_actions, generator=g)
    eye = torch.eye(num_actions)

    def recurrent_fn(embedding, action):
        nxt = torch.tanh(torch.cat([embedding, eye[action]], 1) @ w)
        return kernels.RecurrentFnOutput(reward=nxt[:, 0], discount=torch.full_like(nxt[:, 0], discount),
                                         prior_logits=nxt @ wp, value=nxt[:, 1]), nxt

    embedding = torch.randn(B, 4, generator=g)
    return kernels.RootFnOutput(prior_logits=embedding @ wp, value=embedding[:, 1], embedding=embedding), recurrent_fn


BAD = [
    (dict(root=(torch.zeros(B, A), torch.zeros(B), torch.zeros(B, 4))), TypeError, "root must be a RootFnOutput"),
    (dict(root=kernels.RootFnOutput(torch.zeros(B), torch.zeros(B), torch.zeros(B, 4))), ValueError,
     r"root.prior_logits must be a float \[B, A\]"),
    (dict(root=kernels.RootFnOutput(torch.zeros(B, A), torch.zeros(B + 1), torch.zeros(B, 4))), ValueError,
     r"root.value must be a float \[B\] tensor with B=6"),
    (dict(num_simulations=0), ValueError, "num_simulations must be an integer >= 1, got 0"),
    (dict(num_simulations=2.0), ValueError, "num_simulations must be an integer >= 1, got 2.0"),
    (dict(max_depth=0), ValueError, "max_depth must be None or an integer >= 1, got 0"),
    (dict(invalid_actions=torch.zeros(B, A)), ValueError, r"invalid_actions must be a bool \[B, A\] = \[6, 5\]"),
    (dict(invalid_actions=torch.zeros(B, A + 1, dtype=torch.bool)), ValueError, "invalid_actions must be a bool"),
    (dict(qtransform="min_max"), TypeError, "qtransform must be callable"),
    (dict(temperature=-1.0), ValueError, "temperature must be >= 0.0, got -1.0"),
    (dict(dirichlet_fraction=1.5), ValueError, "dirichlet_fraction must be <= 1.0, got 1.5"),
    (dict(dirichlet_alpha=0.0), ValueError, "dirichlet_alpha must be > 0.0, got 0.0"),
    (dict(noise=torch.zeros(B, A - 1)), ValueError, r"noise must be a float \[B, A\] = \[6, 5\]"),
    (dict(gumbel=torch.zeros(B, A - 1)), ValueError, r"gumbel must be a float \[B, A\] = \[6, 5\]"),
    (dict(max_num_considered_actions=0), ValueError, "max_num_considered_actions must be an integer >= 1, got 0"),
    (dict(gumbel_scale=float("nan")), ValueError, "gumbel_scale must be a finite number"),
    (dict(backend="cuda"), ValueError, "backend must be 'torch', 'triton', 'inductor' or None"),
]


@pytest.mark.parametrize("change, error, message", BAD)
def test_bad_input_is_refused_before_any_work(change, error, message):
    calls = []
    root, recurrent_fn = _model()
    counted = lambda e, a: calls.append(1) or recurrent_fn(e, a)  # noqa: E731
    muzero_only = {"temperature", "dirichlet_fraction", "dirichlet_alpha", "noise"}
    gumbel_only = {"gumbel", "max_num_considered_actions", "gumbel_scale"}
    for policy in (kernels.muzero_policy, kernels.gumbel_muzero_policy):
        wrong = muzero_only if policy is kernels.gumbel_muzero_policy else gumbel_only
        if set(change) & wrong:
            continue
        args = dict(dict(root=root, recurrent_fn=counted, num_simulations=4), **change)
        with pytest.raises(error, match=message):
            policy(**args)
    assert calls == []


@pytest.mark.parametrize("bad_output, message", [
    (lambda out, nxt: (out, nxt[:, :2]), "next embedding must have the root embedding's shape"),
    (lambda out, nxt: (out._replace(prior_logits=out.prior_logits[:, :2]), nxt), r"prior_logits must be a \[6, 5\]"),
    (lambda out, nxt: (out._replace(reward=out.reward[:, None]), nxt), r"reward must be a \[6\] tensor"),
    (lambda out, nxt: out, r"must return \(RecurrentFnOutput\(reward, discount, prior_logits, value\), next_embedding\)"),
])
def test_bad_model_output_is_named(bad_output, message):
    root, recurrent_fn = _model()
    with pytest.raises(ValueError, match=message):
        kernels.gumbel_muzero_policy(root, lambda e, a: bad_output(*recurrent_fn(e, a)), 3)


def test_triton_refuses_a_custom_qtransform(monkeypatch):
    root, recurrent_fn = _model()
    custom = lambda tree, node: kernels.qtransform_by_parent_and_siblings(tree, node)  # noqa: E731
    with pytest.raises(ValueError, match="backend='triton' runs the qtransforms of ezm_gpu.kernels"):
        kernels.muzero_policy(root, recurrent_fn, 3, qtransform=custom, backend="triton")
    partial = functools.partial(kernels.qtransform_by_min_max, min_value=-1.0)
    with pytest.raises(TypeError, match=r"qtransform_by_min_max needs \['max_value'\]"):
        kernels.muzero_policy(root, recurrent_fn, 3, qtransform=partial, backend="triton")
    # The torch backend runs a custom qtransform, with the same result as the function it wraps.
    a = kernels.muzero_policy(root, recurrent_fn, 8, qtransform=custom, generator=torch.Generator().manual_seed(0))
    b = kernels.muzero_policy(root, recurrent_fn, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.search_tree.node_visits, b.search_tree.node_visits) and torch.equal(a.action, b.action)


@pytest.mark.parametrize("policy", ["muzero_policy", "gumbel_muzero_policy"])
def test_generator_makes_searches_reproducible(policy):
    root, recurrent_fn = _model()
    run = lambda seed: getattr(kernels, policy)(root, recurrent_fn, 12, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first.action_weights, again.action_weights) and torch.equal(first.action, again.action)
    assert torch.equal(first.search_tree.node_visits, again.search_tree.node_visits)
    assert not torch.equal(first.search_tree.edge_child, other.search_tree.edge_child)


@pytest.mark.parametrize("policy", ["muzero_policy", "gumbel_muzero_policy"])
def test_inductor_backend_equals_the_reference(policy):
    """The compiled selection step (the fast CPU path) gives the reference's search exactly."""
    root, recurrent_fn = _model(num_actions=A, discount=0.997)
    invalid = torch.zeros(B, A, dtype=torch.bool)
    invalid[0, 1:3] = True
    out = {backend: getattr(kernels, policy)(root, recurrent_fn, 10, invalid_actions=invalid, backend=backend,
                                             generator=torch.Generator().manual_seed(3))
           for backend in ("torch", "inductor")}
    for name in ("node_visits", "edge_child", "node_value", "node_raw_value"):
        assert torch.equal(getattr(out["torch"].search_tree, name), getattr(out["inductor"].search_tree, name)), name
    assert torch.equal(out["torch"].action, out["inductor"].action)


def test_no_host_read_in_the_search_off_cpu(monkeypatch):
    """Off CPU the walks run to their static bound (no flag read back); everything else never reads back."""
    root, recurrent_fn = _model()
    reference = kernels.gumbel_muzero_policy(root, recurrent_fn, 9, gumbel=torch.zeros(B, A), max_depth=4)
    monkeypatch.setattr(discrete, "_all_done", lambda going: False)  # what a CUDA tensor gets
    forbid_host_sync(monkeypatch, "the discrete search")
    out = kernels.gumbel_muzero_policy(root, recurrent_fn, 9, gumbel=torch.zeros(B, A), max_depth=4)
    monkeypatch.undo()
    assert torch.equal(out.search_tree.node_visits, reference.search_tree.node_visits)
    assert torch.equal(out.action, reference.action)


def test_summary_of_a_sampled_tree():
    """The shared tree's summary() reads EZ-M's sampled trees too: root visits and value as its SearchOutput."""
    g = torch.Generator().manual_seed(0)
    k, dims = 2, 3

    def recurrent_fn(embedding, action):
        nxt = torch.tanh(embedding + action.sum(1, keepdim=True))
        return nxt, nxt[:, 0], nxt[:, 1], torch.rand(nxt.shape[0], k, dims, generator=g), torch.zeros(nxt.shape[0], k)

    out = kernels.sampled_gumbel_search(torch.randn(B, 4, generator=g), torch.randn(B, generator=g),
                                        torch.rand(B, 7, dims, generator=g), torch.zeros(B, 7), recurrent_fn,
                                        kernels.SearchConfig(num_simulations=12, num_child_actions=k))
    summary = out.tree.summary()
    assert torch.equal(summary.visit_counts, out.visit_counts.float())
    torch.testing.assert_close(summary.value, out.root_value, rtol=0, atol=0)
    child = out.tree.edge_child[:, :7]
    expected_q = torch.where(child >= 0, out.completed_q, 0.0)
    torch.testing.assert_close(summary.qvalues, expected_q, rtol=1e-6, atol=1e-6)
    assert out.tree.embeddings.shape == (B, 13, 4)
