"""A whole EZ-M update on a small model and replay: every part moves as it should."""
import pytest
import torch

from ezm_gpu.planning import SearchSettings
from ezm_gpu.learner import Learner, LearnerConfig, entropy_estimate, unroll
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.replay import ReplayBuffer, ReplayConfig

OBS, ACT, TASKS, WORLDS = 6, 3, 2, 4


def _filled_replay(steps=40, batch=8):
    replay = ReplayBuffer(ReplayConfig(num_tasks=TASKS, capacity=256, obs_dim=OBS, action_dim=ACT, num_worlds=WORLDS,
                                       batch_size=batch))
    g = torch.Generator().manual_seed(0)
    tasks = torch.tensor([0, 0, 1, 1])
    for t in range(steps):
        done = torch.tensor([t % 15 == 14, False, t % 20 == 19, False])
        replay.add(tasks, torch.randn(WORLDS, OBS, generator=g), torch.rand(WORLDS, ACT, generator=g) * 2 - 1,
                   torch.rand(WORLDS, generator=g), done, torch.randn(WORLDS, OBS, generator=g))
    return replay


def _learner(**overrides):
    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))
    config = LearnerConfig(**{"total_updates": 10, "lr_decay_at": 0.3, "ema_interval": 2, **overrides})
    return Learner(model, config, SearchSettings(num_simulations=4, num_top_actions=4))


def test_updates_train_the_model_and_its_companions():
    replay, learner = _filled_replay(), _learner()
    before = [p.detach().clone() for p in learner.model.parameters()]
    # The task embedding's max_norm renormalises looked-up rows in place, in any copy: leave it out.
    weights = lambda model: [p for n, p in model.named_parameters() if "embed" not in n]  # noqa: E731
    ema_before = [p.detach().clone() for p in weights(learner.ema.copy)]
    priorities_before = replay.priorities().clone()
    g = torch.Generator().manual_seed(1)
    terms = learner.update(replay, g)
    assert set(terms) >= {"reward", "value", "consistency", "policy", "entropy", "path_consistency", "total", "loss",
                          "grad_norm"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))  # Adam stepped
    assert all(torch.equal(a, b) for a, b in zip(ema_before, weights(learner.ema.copy)))  # interval 2: not yet
    assert not torch.equal(priorities_before, replay.priorities())  # sampled rows got fresh priorities
    for _ in range(2):
        learner.update(replay, g)
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, weights(learner.ema.copy)))
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # x0.1 after 30% of 10 updates
    assert learner.updates == 3



@pytest.mark.parametrize("decay_at, decayed_from", [(0.3, 3), (1.0, None), (2.0, None)])
def test_learning_rate_steps_once_at_its_fraction_or_never(decay_at, decayed_from):
    """The x0.1 step comes after ``lr_decay_at`` of the planned updates; at 1 or more it never comes (not even
    at the last planned update, which a resume with more steps would carry into its extra updates)."""
    replay, learner = _filled_replay(), _learner(lr=1e-4, total_updates=10, lr_decay_at=decay_at)
    g = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(11):  # one more than planned
        learner.update(replay, g)
        rates.append(float(learner.optimizer.param_groups[0]["lr"]))  # (a tensor, read by Adam)
    expected = [1e-5 if decayed_from is not None and u >= decayed_from else 1e-4 for u in range(1, 12)]
    assert rates == pytest.approx(expected)

def test_repeated_updates_lower_the_loss_on_fixed_data():
    replay, learner = _filled_replay(), _learner(lr=1e-3, total_updates=1000)
    losses = [float(learner.update(replay, torch.Generator().manual_seed(3))["total"]) for _ in range(15)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_entropy_estimate_matches_the_gaussian_formula():
    log_std = torch.tensor([[0.0, -1.0]])
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(5))
    expected = -2 * ((-0.5 * eps.square() - log_std).sum() - torch.log(torch.tensor(2 * torch.pi)))
    got = entropy_estimate(log_std, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected.reshape(1))


def test_bfloat16_autocast_update_matches_float32():
    """Mixed precision (the GPU setting) on CPU: same sample and targets, loss terms within bfloat16's
    resolution of the float32 update, float32 parameters and gradients, and the reanalysis untouched."""
    results = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        replay, learner = _filled_replay(), _learner(autocast_dtype=dtype)
        terms = learner.update(replay, torch.Generator().manual_seed(5))
        assert all(p.dtype == torch.float32 for p in learner.model.parameters())
        results[name] = (terms, replay.priorities().clone())
    (fp32, prio32), (bf16, prio16) = results["fp32"], results["bf16"]
    for key in ("reward", "value", "consistency", "policy", "path_consistency", "total"):
        assert torch.allclose(bf16[key], fp32[key], rtol=3e-2, atol=3e-2), (key, bf16[key], fp32[key])
    assert not torch.equal(bf16["total"], fp32["total"])  # autocast really ran in bfloat16
    assert torch.allclose(prio16, prio32, rtol=5e-2, atol=5e-2)


def test_reanalysis_uses_the_configured_candidates(monkeypatch):
    """The reanalysis searches draw their candidates like the acting search (K, root_wide, child_wide from the
    run's search settings), not the release's 16 / 12 / 1 defaults."""
    import ezm_gpu.learner as learner_module

    seen = []
    real = learner_module.reanalyze

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((args[2], out.best_actions))  # reanalyze(model, batch, settings, ...)
        return out

    monkeypatch.setattr(learner_module, "reanalyze", recording)
    replay = _filled_replay()
    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))
    search = SearchSettings(num_simulations=2, num_top_actions=2, num_root_actions=2, root_wide=0, child_wide=0)
    learner = Learner(model, LearnerConfig(total_updates=10), search)
    learner.update(replay, torch.Generator().manual_seed(1))
    settings, best = seen[0]
    assert settings == search  # the acting search's settings, one object
    assert best.shape == (replay.config.batch_size, replay.config.unroll_steps + 1, ACT)


@pytest.mark.parametrize("step", [0, 1, 2, 4])
def test_step_k_heads_reach_the_representation_at_half_to_the_k(step):
    """The release hooks ×0.5 on every unrolled latent, which both that step's heads and the next dynamics
    step read: one step-k head loss sends 0.5^k of its unscaled gradient to the representation. Reference:
    the same unroll written out with model pieces and no scaling (factors of 0.5 are exact in float32, so
    the only difference is the order of additions)."""
    from ezm_gpu.reanalyze import reanalyze

    replay, learner = _filled_replay(), _learner()
    model = learner.model.train()
    batch = replay.sample(torch.Generator().manual_seed(2))
    targets = reanalyze(learner.ema.copy, batch, learner.search, 5, 5, 0, torch.Generator().manual_seed(3))
    captured = []
    hook = model.rep_blocks.register_forward_hook(
        lambda module, inputs, output: captured.append(output) if output.requires_grad else None)
    try:
        predictions, _ = unroll(model, batch, targets, 5, torch.Generator().manual_seed(4))
    finally:
        hook.remove()
    (representation,) = captured  # the one differentiable representation: ŝ_0
    weight = torch.randn(predictions.value_logits.shape[1:], generator=torch.Generator().manual_seed(6))
    (got,) = torch.autograd.grad((predictions.value_logits[step] * weight).sum(), representation)

    tasks = batch.task_ids
    latent0 = model.represent(batch.obs[:, 0], tasks).detach().requires_grad_(True)
    latent = latent0
    for k in range(step):
        latent = model.dynamics(latent, batch.actions[:, k], tasks)
    (reference,) = torch.autograd.grad((model.predict(latent, tasks).value_logits * weight).sum(), latent0)
    assert reference.abs().max() > 0
    torch.testing.assert_close(got, reference * 0.5 ** step, rtol=1e-5, atol=1e-7)


def _random_grads(model, generator):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def test_the_learners_adam_step_is_torchs_fused_adam():
    """The learner calls torch's fused Adam kernel itself (no Optimizer.step wrapper, which torch.compile breaks
    the graph at): the same weights as ``torch.optim.Adam(fused=True).step()`` bit for bit, and as the
    single-tensor Adam within float32 rounding (a few ulps per step of lr 1e-4)."""
    import copy

    learner = _learner()
    fused, single = copy.deepcopy(learner.model), copy.deepcopy(learner.model)
    lr, decay = learner.config.lr, learner.config.weight_decay
    optimizers = [torch.optim.Adam(fused.parameters(), lr=lr, weight_decay=decay, fused=True),
                  torch.optim.Adam(single.parameters(), lr=lr, weight_decay=decay, foreach=False)]
    for step in range(3):
        for model in (learner.model, fused, single):
            _random_grads(model, torch.Generator().manual_seed(step))
        learner._adam_step()
        for optimizer in optimizers:
            optimizer.step()
    for ours, a, b in zip(learner.model.parameters(), fused.parameters(), single.parameters()):
        assert torch.equal(ours, a)
        torch.testing.assert_close(ours, b, rtol=1e-5, atol=1e-6)
    state = learner.optimizer.state[next(learner.model.parameters())]
    assert float(state["step"]) == 3.0 and state["step"].dtype == torch.float32


def test_a_checkpoint_of_the_single_tensor_adam_resumes_fused():
    """Checkpoints written before Adam was fused name the single-tensor implementation; a resumed learner keeps
    its own (fused: no host read) and continues from the saved moments and step count."""
    replay, old = _filled_replay(), _learner()
    group = old.optimizer.param_groups[0]
    old.optimizer = torch.optim.Adam(old.model.parameters(), lr=float(group["lr"]), weight_decay=group["weight_decay"],
                                     foreach=False)
    _random_grads(old.model, torch.Generator().manual_seed(2))
    old.optimizer.step()
    resumed = _learner()
    resumed.load_state_dict(old.state_dict())
    assert resumed.optimizer.param_groups[0]["fused"] and resumed.optimizer.param_groups[0]["foreach"] is None
    state = resumed.optimizer.state[next(resumed.model.parameters())]
    assert float(state["step"]) == 1.0 and state["step"].dtype == torch.float32
    resumed.update(replay, torch.Generator().manual_seed(3))  # continues with the loaded state
    assert float(state["step"]) == 2.0
