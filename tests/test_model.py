"""The EZ-M world model (ezm_gpu.model): sizes, shapes, masks, value reduction, obs normalisation, init."""
import dataclasses

import pytest
import torch

from ezm_gpu.model import (PRESETS, EZMModel, InitialInference, ModelConfig, RecurrentInference, count_parameters,
                           policy_log_prob, policy_params, sample_policy)
from ezm_gpu.supports import Support

# The release's sizes (spec "Model"; EZ-M authors' count for the hard and medium task sets).
RELEASE_PARAMS = {"hard": 16_071_328, "medium": 15_919_908}
# Our presets keep the reward tower's action MLP (spec text and the release's humanoid_bench_state.yaml,
# action_embedding: True): that adds 13,830 (hard) / 32,730 (medium) parameters over the quoted counts,
# +0.086% / +0.206%, inside the accepted ±0.5%. Without it the counts are exact (next test).
OUR_PARAMS = {"hard": 16_085_158, "medium": 15_952_638}
TOLERANCE = 0.005


@pytest.mark.parametrize("preset", ["hard", "medium"])
def test_parameter_count_matches_release(preset):
    model = EZMModel(PRESETS[preset]())
    n = count_parameters(model)
    assert n == OUR_PARAMS[preset]
    assert abs(n - RELEASE_PARAMS[preset]) <= TOLERANCE * RELEASE_PARAMS[preset]


@pytest.mark.parametrize("preset", ["hard", "medium"])
def test_parameter_count_exact_without_reward_action_mlp(preset):
    assert count_parameters(EZMModel(PRESETS[preset](reward_action_mlp=False))) == RELEASE_PARAMS[preset]


def test_buffers_are_not_parameters():
    model = EZMModel(ModelConfig.hard())
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith("obs_norm") for name in names)
    assert "action_masks" not in names
    buffers = dict(model.named_buffers())
    assert {"obs_norm.mean", "obs_norm.var", "obs_norm.count", "action_masks"} <= set(buffers)
    # BatchNorm affine weights are parameters (counted), running statistics are buffers.
    assert any(name.endswith("1.weight") and "value_heads.0" in name for name in names)


def test_presets_keep_51_bins():
    for make in PRESETS.values():
        config = make()
        assert config.bins == 51 and config.support == Support(-299.0, 299.0, 51)
    cpu = ModelConfig.cpu()
    assert count_parameters(EZMModel(cpu)) < 1_000_000


def _model(seed=0, masks=None, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig.cpu(obs_dim=12, action_dim=5, num_tasks=3, **overrides)
    return EZMModel(config, action_masks=masks)


MASKS = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)


def _batch(B=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, 12, generator=g) * 3 + 1
    task_ids = torch.arange(B) % 3
    action = torch.tanh(torch.randn(B, 5, generator=g))
    return obs, task_ids, action


def test_inference_shapes():
    model = _model(masks=MASKS).eval()
    obs, task_ids, action = _batch()
    H, A = model.config.hidden, 5
    with torch.no_grad():
        out = model.initial_inference(obs, task_ids, generator=torch.Generator().manual_seed(0))
        assert isinstance(out, InitialInference)
        assert out.latent.shape == (6, H) and out.value.shape == (6,) and out.value_variance.shape == (6,)
        assert out.policy_mean.shape == (6, A) and out.policy_log_std.shape == (6, A)
        rec = model.recurrent_inference(out.latent, action, task_ids)
        assert isinstance(rec, RecurrentInference)
        assert rec.next_latent.shape == (6, H)
        for t in (rec.reward, rec.value, rec.value_variance):
            assert t.shape == (6,)
        assert rec.policy_mean.shape == (6, A) and rec.policy_log_std.shape == (6, A)
        # Eval mode: any batch size, including the single root of one tree.
        one = model.initial_inference(obs[:1], task_ids[:1])
        assert one.latent.shape == (1, H)


def test_training_shapes_and_gradients():
    model = _model(masks=MASKS).train()
    obs, task_ids, action = _batch()
    latent, pred = model.initial_training(obs, task_ids)
    assert pred.value_logits.shape == (5, 6, 51)
    nxt, reward_logits, pred1 = model.recurrent_training(latent, action, task_ids)
    nxt2, reward_logits2, pred2 = model.recurrent_training(nxt, action, task_ids)  # second unroll step
    assert reward_logits.shape == (6, 51) and pred1.policy_mean.shape == (6, 5)
    online = model.project(nxt2)
    target = model.project(nxt2, with_prediction_head=False)
    assert online.shape == target.shape == (6, model.config.proj_out) and not target.requires_grad
    loss = (reward_logits2.sum() + pred2.value_logits.sum() + pred2.policy_mean.sum() + online.sum()
            + pred.policy_log_std.sum())
    loss.backward()
    assert model.task_embedding.weight.grad is not None
    assert model.rep_in[0].weight.grad is not None


def test_policy_samples_zero_masked_dims():
    model = _model(masks=MASKS).eval()
    obs, task_ids, _ = _batch()
    with torch.no_grad():
        # Make the policy head non-trivial so the masked dims would otherwise be non-zero.
        torch.nn.init.normal_(model.policy_head[-1].weight, std=0.05)
        torch.nn.init.normal_(model.policy_head[-1].bias, std=0.5)
        out = model.initial_inference(obs, task_ids)
    mask = model.action_mask(task_ids)
    assert torch.equal(out.policy_mean * (1 - mask), torch.zeros_like(mask))
    g = torch.Generator().manual_seed(3)
    actions = sample_policy(out.policy_mean, out.policy_log_std, mask, num_samples=7, std_scale=3.0, generator=g)
    assert actions.shape == (6, 7, 5)
    assert torch.equal(actions * (1 - mask[:, None]), torch.zeros_like(actions))
    assert (actions.abs() <= 1).all()
    valid = mask[:, None].expand_as(actions).bool()
    assert (actions[valid] != 0).all()
    single = sample_policy(out.policy_mean, out.policy_log_std, mask, generator=g)
    assert single.shape == (6, 5) and torch.equal(single * (1 - mask), torch.zeros_like(mask))
    # Masked dims do not contribute to the log density.
    lp = policy_log_prob(actions, out.policy_mean, out.policy_log_std, mask)
    assert lp.shape == (6, 7) and torch.isfinite(lp).all()
    perturbed = actions + 0.5 * (1 - mask[:, None])
    torch.testing.assert_close(policy_log_prob(perturbed, out.policy_mean, out.policy_log_std, mask), lp)


def test_policy_params_tdmpc2_log_std():
    raw = torch.tensor([[0.3, -2.0, 0.0, 100.0]])
    mean, log_std = policy_params(raw, torch.ones(1, 2))
    torch.testing.assert_close(mean, torch.tensor([[0.3, -2.0]]))
    torch.testing.assert_close(log_std, torch.tensor([[-4.0, 2.0]]))  # -10 + 6(tanh(x) + 1)


def test_task_embedding_max_norm():
    model = _model()
    with torch.no_grad():
        model.task_embedding.weight.mul_(50.0)  # rows well above norm 1
    e = model.embed_task(torch.tensor([0, 1, 2, 1]))
    norms = e.norm(dim=-1)
    assert (norms <= 1.0 + 1e-5).all()
    torch.testing.assert_close(norms, torch.ones(4), rtol=0, atol=1e-5)


def test_value_is_min_of_two_of_five_heads():
    model = _model().eval()
    obs, task_ids, action = _batch()
    with torch.no_grad():
        latent, pred = model.initial_training(obs, task_ids)
        heads = model.support.decode(pred.value_logits).clamp(0.0, 1e5)  # [5, B]
        assert heads.shape == (5, 6)
        assert not torch.allclose(heads[0], heads[1])  # distinct heads, else the check below is vacuous
        pairs = {(i, j): torch.minimum(heads[i], heads[j]) for i in range(5) for j in range(i + 1, 5)}
        seen = set()
        for seed in range(16):
            out = model.initial_inference(obs, task_ids, generator=torch.Generator().manual_seed(seed))
            match = [p for p, v in pairs.items() if torch.allclose(out.value, v, atol=1e-6)]
            assert match, "value is not the min of any 2 distinct heads"
            seen.update(match)
            torch.testing.assert_close(out.value_variance, heads.var(0))
            again = model.initial_inference(obs, task_ids, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(out.value, again.value)  # the generator makes the draw reproducible
        assert len(seen) > 3  # different seeds pick different pairs
        rec = model.recurrent_inference(latent, action, task_ids, generator=torch.Generator().manual_seed(0))
        heads1 = model.decode_values(model.predict(rec.next_latent, task_ids).value_logits)
        assert any(torch.allclose(rec.value, torch.minimum(heads1[i], heads1[j]), atol=1e-6)
                   for i in range(5) for j in range(i + 1, 5))


def test_values_clipped_to_range():
    model = _model().eval()
    obs, task_ids, _ = _batch()
    with torch.no_grad():
        for head in model.value_heads:  # push every head's mass to the most negative atom
            head[-1].weight.zero_()
            head[-1].bias.copy_(torch.linspace(50.0, -50.0, 51))
        out = model.initial_inference(obs, task_ids)
    assert torch.equal(out.value, torch.zeros(6))


def test_running_normalisation_updates_only_when_asked():
    model = _model().train()
    obs, task_ids, action = _batch(B=64)
    before = {k: v.clone() for k, v in model.obs_norm.state_dict().items()}
    latent, _ = model.initial_training(obs, task_ids)
    model.recurrent_training(latent, action, task_ids)
    model.eval()
    with torch.no_grad():
        model.initial_inference(obs, task_ids)
    for k, v in model.obs_norm.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.update_obs_stats(obs)
    o = obs.double()
    count = 1e3 + 64
    mean = o.mean(0) * 64 / count
    var = (torch.ones(12, dtype=torch.float64) * 1e3 + o.var(0, unbiased=False) * 64
           + o.mean(0).square() * 1e3 * 64 / count) / count
    torch.testing.assert_close(model.obs_norm.mean, mean.float())
    torch.testing.assert_close(model.obs_norm.var, var.float())
    assert model.obs_norm.count.item() == count
    # The representation now sees the new statistics.
    normed = model.obs_norm(obs)
    torch.testing.assert_close(normed, (obs - mean.float()) / torch.sqrt(var.float() + 1e-5))


def test_running_normalisation_converges_to_data_statistics():
    model = _model()
    g = torch.Generator().manual_seed(5)
    for _ in range(200):
        model.update_obs_stats(torch.randn(512, 12, generator=g) * 4.0 + 2.0)
    torch.testing.assert_close(model.obs_norm.mean, torch.full((12,), 2.0), rtol=0, atol=0.1)
    torch.testing.assert_close(model.obs_norm.var.sqrt(), torch.full((12,), 4.0), rtol=0, atol=0.2)


def test_zero_init_heads():
    model = _model(masks=MASKS).eval()
    obs, task_ids, action = _batch()
    with torch.no_grad():
        out = model.initial_inference(obs, task_ids)
        rec = model.recurrent_inference(out.latent, action, task_ids)
        assert torch.equal(model.reward_logits(out.latent, action, task_ids), torch.zeros(6, 51))
    # Zero reward logits: uniform over a symmetric support -> expected atom 0 -> reward 0.
    torch.testing.assert_close(rec.reward, torch.zeros(6), rtol=0, atol=1e-5)
    # Zero policy output: mean 0, log_std = -10 + 6(tanh(0) + 1) = -4 on every dim (masked ones included).
    assert torch.equal(out.policy_mean, torch.zeros(6, 5))
    torch.testing.assert_close(out.policy_log_std, torch.full((6, 5), -4.0))
    # Value heads are not zero-initialised (as released): their logits differ from zero.
    with torch.no_grad():
        assert model.predict(out.latent, task_ids).value_logits.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(num_value_heads=1)
    with pytest.raises(ValueError):
        ModelConfig(hidden=0)
    with pytest.raises(ValueError):
        EZMModel(ModelConfig.cpu(), action_masks=torch.ones(2, 2))
    config = ModelConfig.hard(reward_head=[256])
    assert config.reward_head == (256,) and dataclasses.replace(config).obs_dim == 177


def test_drives_the_batched_search():
    """The inference API plugs into ezm_gpu.kernels.sampled_gumbel_search (torch backend) with a recurrent_fn
    that closes over the per-tree task ids."""
    from ezm_gpu.kernels import SearchConfig, sampled_gumbel_search

    model = _model(masks=MASKS).eval()
    obs, task_ids, _ = _batch()
    g = torch.Generator().manual_seed(0)
    config = SearchConfig(num_simulations=8, num_top_actions=4, num_child_actions=2)
    with torch.no_grad():
        root = model.initial_inference(obs, task_ids, generator=g)
        mask = model.action_mask(task_ids)
        root_actions = sample_policy(root.policy_mean, root.policy_log_std, mask, num_samples=4,
                                     generator=g).clamp(-0.999, 0.999)

        def recurrent_fn(latent, action):
            out = model.recurrent_inference(latent, action, task_ids, generator=g)
            child = sample_policy(out.policy_mean, out.policy_log_std, mask, num_samples=2, generator=g)
            return out.next_latent, out.reward, out.value, child.clamp(-0.999, 0.999), torch.zeros(6, 2)

        result = sampled_gumbel_search(root.latent, root.value, root_actions, torch.zeros(6, 4), recurrent_fn,
                                       config, backend="torch")
    assert result.action.shape == (6, 5)
    assert torch.equal(result.action * (1 - mask), torch.zeros_like(mask))
    assert torch.isfinite(result.root_value).all()
