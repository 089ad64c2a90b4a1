"""Search API: input validation, configuration, backend choice, no host synchronisation, schedule."""
import os
import subprocess
import sys

import pytest
import torch

from ezm_gpu.kernels import SearchConfig, halving_schedule, sampled_gumbel_search
from models import LinearModel, random_roots

LATENT, ACTION = 4, 3


def _inputs(batch=4, num_root=6, config=SearchConfig(num_simulations=8, num_top_actions=4)):
    model = LinearModel(LATENT, ACTION, config.num_child_actions, seed=0)
    return random_roots(batch, num_root, LATENT, ACTION, model, seed=0), model, config


def _search(**overrides):
    roots, model, config = _inputs()
    kwargs = dict(roots, recurrent_fn=model, config=config)
    kwargs.update(overrides)
    return sampled_gumbel_search(**kwargs)


class _NoCalls:
    """recurrent_fn that fails the test if the search got as far as calling the model."""

    def __call__(self, *args):
        raise AssertionError("the search started work before rejecting its input")


@pytest.mark.parametrize("overrides, message", [
    (dict(root_actions=torch.zeros(4, 6)), r"root_actions must be \[B, K, A\]"),
    (dict(root_actions=torch.zeros(4, 0, 3)), r"B, K, A >= 1"),
    (dict(root_value=torch.zeros(5)), r"root_value must have shape \[4\]"),
    (dict(root_prior_logits=torch.zeros(4, 5)), r"root_prior_logits must have shape \[4, 6\]"),
    (dict(gumbel=torch.zeros(4, 7)), r"gumbel must have shape \[4, 6\]"),
    (dict(root_embedding=torch.zeros(3, LATENT)), r"root_embedding must be \[B, D, ...\] with B=4"),
    (dict(root_value=torch.zeros(4, dtype=torch.int64)), r"root_value must be a floating-point tensor"),
    (dict(root_actions=torch.zeros(4, 6, 3, dtype=torch.int32)), r"root_actions must be a floating-point"),
    (dict(root_value=torch.tensor([0.0, float("nan"), 0.0, 0.0])), r"root_value must be finite"),
    (dict(root_value=torch.tensor([0.0, float("inf"), 0.0, 0.0])), r"root_value must be finite"),
    (dict(root_prior_logits=[[0.0] * 6] * 4), r"root_prior_logits must be a torch.Tensor"),
    (dict(root_value=torch.zeros(4, device="meta")), r"all inputs must be on one device"),
    (dict(config=dict(num_simulations=4)), r"config must be a SearchConfig"),
    (dict(backend="cuda"), r"backend must be 'torch', 'triton', 'inductor' or None"),
])
def test_bad_inputs_fail_before_any_work(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _search(recurrent_fn=_NoCalls(), **overrides)


@pytest.mark.parametrize("field, value, message", [
    ("num_simulations", 0, "num_simulations must be an integer >= 1"),
    ("num_top_actions", 0, "num_top_actions must be an integer >= 1"),
    ("num_child_actions", 0, "num_child_actions must be an integer >= 1"),
    ("num_simulations", 2.5, "num_simulations must be an integer"),
    ("discount", 1.5, r"discount must lie in \[0, 1\]"),
    ("discount", float("nan"), "discount must be a finite number"),
    ("c_visit", -1.0, "c_visit must be >= 0"),
    ("value_delta", 0.0, "value_delta must be > 0"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**{field: value})


@pytest.mark.parametrize("outputs, message", [
    (lambda e, a, k: (e, torch.zeros(e.shape[0]), torch.zeros(e.shape[0]), torch.zeros(e.shape[0], k + 1, ACTION),
                      torch.zeros(e.shape[0], k)), r"child_actions must have shape \[4, 2, 3\]"),
    (lambda e, a, k: (e, torch.zeros(e.shape[0], 1), torch.zeros(e.shape[0]), torch.zeros(e.shape[0], k, ACTION),
                      torch.zeros(e.shape[0], k)), r"reward must have shape \[4\]"),
    (lambda e, a, k: (e, torch.zeros(e.shape[0])), r"must return a SampledRecurrentFnOutput \(next_embedding, reward"),
])
def test_bad_model_outputs_are_named(outputs, message):
    with pytest.raises(ValueError, match=message):
        _search(recurrent_fn=lambda e, a: outputs(e, a, 2))


def test_search_does_no_host_sync(monkeypatch):
    """Every way of reading a tensor back to the host raises inside the search."""
    roots, model, config = _inputs(batch=6, num_root=5, config=SearchConfig(num_simulations=10, num_top_actions=4))

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the search")

    for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    for backend in ("torch", "triton"):
        out = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend=backend, check_finite=False)
        monkeypatch.undo()
        assert out.visit_counts.sum(1).tolist() == [10] * 6  # the search did run
        for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        monkeypatch.setattr(torch, "nonzero", forbidden)


def test_backend_choice():
    out = _search(backend=None)  # CPU tensors: the torch reference
    assert out.visit_counts.sum(1).tolist() == [8] * 4
    env = dict(os.environ, TRITON_INTERPRET="0")
    code = ("import torch; from ezm_gpu.kernels import sampled_gumbel_search as s\n"
            "try:\n s(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 3, 1), torch.zeros(1, 3),"
            " lambda e, a: None, backend='triton')\n"
            "except ValueError as e: print(e)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "backend='triton' needs a CUDA device or TRITON_INTERPRET=1" in result.stdout


def test_halving_schedule_of_ezm_default():
    """search.md: N=32, m=16 visits 16 candidates once, 8 once, 4 twice, and leaves 2 survivors."""
    schedule = halving_schedule(32, 16)
    assert schedule.survivors == (16,) * 16 + (8,) * 8 + (4,) * 8
    assert [s for s, keep in enumerate(schedule.keep) if keep] == [15, 23, 31]
    assert schedule.final_survivors == 2
    # Descents bound: the selected survivor's visits, 0 in phase 0, then 1, then 2 and 3.
    assert schedule.max_descents == (0,) * 16 + (1,) * 8 + (2,) * 4 + (3,) * 4


@pytest.mark.parametrize("n, m, halvings_at, survivors_after", [
    (5, 16, [4], 8),  # N < K: the first phase is cut at N and halves once
    (1, 7, [0], 3),  # one simulation, halving right after it
    (12, 5, [4, 8], 1),  # 5 -> 2 (after 5 sims of 1 visit) -> 1 (2 survivors x 2 visits)
    (8, 1, [], 1),  # m = 1: no halving
    (8, 2, [7], 1),  # one phase ending at N
])
def test_halving_schedule_cases(n, m, halvings_at, survivors_after):
    schedule = halving_schedule(n, m)
    assert schedule.final_survivors == survivors_after
    assert [s for s, keep in enumerate(schedule.keep) if keep] == halvings_at


def test_visits_are_spread_as_the_schedule_says():
    roots, model, _ = _inputs(batch=5, num_root=16)
    config = SearchConfig()  # EZ-M: N=32, K=m=16
    out = sampled_gumbel_search(**roots, recurrent_fn=model, config=config)
    visits = out.visit_counts.sort(1, descending=True).values
    expected = torch.tensor([4] * 4 + [2] * 4 + [1] * 8)  # 16 once, then 8 once more, then 4 twice more
    assert torch.equal(visits, expected.expand(5, -1).to(visits.dtype))
    assert out.considered.sum(1).tolist() == [2] * 5


def test_inductor_backend_matches_the_reference():
    """The torch.compile'd reference (the fast CPU path) returns exactly the eager reference's search."""
    roots, model, config = _inputs(batch=9, num_root=5, config=SearchConfig(num_simulations=9, num_top_actions=4))
    eager = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="torch")
    compiled = sampled_gumbel_search(**roots, recurrent_fn=model, config=config, backend="inductor")
    for name in ("action_index", "visit_counts", "survivors", "considered"):
        assert torch.equal(getattr(eager, name), getattr(compiled, name)), name
    for name in ("node_visits", "node_parent", "edge_child"):
        assert torch.equal(getattr(eager.tree, name), getattr(compiled.tree, name)), name
    for name in ("root_value", "completed_q", "action_weights"):
        torch.testing.assert_close(getattr(eager, name), getattr(compiled, name), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eager.tree.node_value_sum, compiled.tree.node_value_sum, rtol=1e-5, atol=1e-6)


class _PoisonedModel(LinearModel):
    """LinearModel whose reward, value or child prior is NaN for chosen trees (a diverged world model)."""

    def __init__(self, *args, poison: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = poison  # output name -> tree indices

    def __call__(self, latent, action):
        nxt, reward, value, children, logits = super().__call__(latent, action)
        nan = float("nan")
        reward = reward.index_fill(0, torch.tensor(self.poison.get("reward", []), dtype=torch.long), nan)
        value = value.index_fill(0, torch.tensor(self.poison.get("value", []), dtype=torch.long), nan)
        logits = logits.index_fill(0, torch.tensor(self.poison.get("prior", []), dtype=torch.long), nan)
        return nxt, reward, value, children, logits


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_in_one_tree_stays_in_that_tree_and_in_bounds(backend):
    """A NaN prior, action, reward or value ranks as -inf: the bad trees' outputs are valid slots (no
    out-of-bounds index, as the pairwise ranks once produced), the other trees are exactly the clean search's,
    and the torch and Triton paths agree on every integer output."""
    batch, num_root, config = 12, 8, SearchConfig(num_simulations=12, num_top_actions=8)
    clean_model = LinearModel(LATENT, ACTION, 2, seed=3)
    roots = random_roots(batch, num_root, LATENT, ACTION, clean_model, seed=3)
    poisoned = dict(roots)
    poisoned["root_prior_logits"] = roots["root_prior_logits"].clone()
    poisoned["root_prior_logits"][1, 2] = float("nan")  # a root prior
    poisoned["root_actions"] = roots["root_actions"].clone()
    poisoned["root_actions"][3, :, 0] = float("nan")  # actions -> NaN latents, rewards, values downstream
    poisoned["gumbel"] = roots["gumbel"].clone()
    poisoned["gumbel"][9, 5] = float("nan")
    model = _PoisonedModel(LATENT, ACTION, 2, seed=3, poison={"reward": [5], "value": [7], "prior": [8]})
    bad = [1, 3, 5, 7, 8, 9]
    out = sampled_gumbel_search(**poisoned, recurrent_fn=model, config=config, backend=backend)
    clean = sampled_gumbel_search(**roots, recurrent_fn=clean_model, config=config, backend=backend)
    good = [b for b in range(batch) if b not in bad]
    for name in ("action_index", "visit_counts", "survivors", "considered"):
        assert torch.equal(getattr(out, name)[good], getattr(clean, name)[good]), name
    assert bool(((out.action_index >= 0) & (out.action_index < num_root)).all())
    assert torch.equal(out.visit_counts.sum(1), torch.full((batch,), config.num_simulations, dtype=out.visit_counts.dtype))
    final = out.survivors[:, :config.schedule(num_root).final_survivors]
    assert bool(((final >= 0) & (final < num_root)).all())
    assert all(len(set(row.tolist())) == len(row) for row in final)  # distinct candidates, a permutation's prefix
    if backend == "triton":
        reference = sampled_gumbel_search(**poisoned, recurrent_fn=model, config=config, backend="torch")
        for name in ("action_index", "visit_counts", "survivors"):
            assert torch.equal(getattr(out, name), getattr(reference, name)), name
