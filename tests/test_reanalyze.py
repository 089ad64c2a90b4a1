"""Reanalysis returns, for each of the K+1 positions, what the search returns when called on it directly."""
import pytest
import torch

from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings, search_positions
from ezm_gpu.reanalyze import reanalyze
from ezm_gpu.replay import ReplayBatch
from ezm_gpu.targets import n_step_values

K, N_STEPS, B, OBS, ACT = 5, 5, 3, 6, 3
CONFIG = SearchSettings(num_simulations=8, num_top_actions=4, num_root_actions=4, root_wide=2)


def _deterministic_candidates(mean, log_std, num, num_wide, mask, generator):
    """Spread around tanh(mean): no random draws, so every call sees the same candidates."""
    spread = torch.linspace(-0.5, 0.5, num)[None, :, None]
    return (torch.tanh(mean)[:, None, :] + spread).clamp(-0.999, 0.999) * mask[:, None, :]


def _batch(age):
    g = torch.Generator().manual_seed(0)
    L = K + N_STEPS
    return ReplayBatch(
        task_ids=torch.tensor([0, 1, 1]), indices=torch.arange(B), stamps=torch.arange(B), age=age,
        weights=torch.ones(B), obs=torch.randn(B, L + 1, OBS, generator=g), actions=torch.rand(B, L, ACT, generator=g),
        rewards=torch.rand(B, L, generator=g), obs_mask=torch.ones(B, L + 1, dtype=torch.bool),
        step_mask=torch.ones(B, L, dtype=torch.bool), terminal=torch.zeros(B, L + 1, dtype=torch.bool))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    masks = torch.tensor([[True, True, False], [True, True, True]])
    return EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=2), action_masks=masks).eval()


def test_positions_equal_direct_searches(model):
    batch = _batch(age=torch.zeros(B, dtype=torch.int64))
    kwargs = dict(candidates=_deterministic_candidates)
    result = reanalyze(model, batch, CONFIG, K, N_STEPS, num_updates=0,
                       generator=torch.Generator().manual_seed(7), **kwargs)
    assert result.best_actions.shape == (B, K + 1, ACT) and result.search_values.shape == (B, K + 1)
    for j in range(K + 1):  # the same generator seed replays the same value-head draws
        direct, _ = search_positions(model, batch.obs[:, j], batch.task_ids, CONFIG,
                                     torch.Generator().manual_seed(7), **kwargs)
        torch.testing.assert_close(result.best_actions[:, j], direct.action, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.search_values[:, j], direct.root_value, rtol=1e-4, atol=1e-5)
    assert torch.equal(result.best_actions[0, :, 2], torch.zeros(K + 1))  # task 0 has no third actuator
    expected = n_step_values(batch.rewards, result.bootstrap_values, batch.step_mask, batch.obs_mask, batch.terminal,
                             0.99, N_STEPS, K)
    torch.testing.assert_close(result.value_targets, expected)
    assert torch.equal(result.reward_targets, batch.rewards[:, :K])


def test_mixed_rule_uses_search_values_for_old_samples(model):
    batch = _batch(age=torch.tensor([0, 10**6, 10**6]))
    kwargs = dict(candidates=_deterministic_candidates)
    late = reanalyze(model, batch, CONFIG, K, N_STEPS, num_updates=60_000,
                     generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(late.value_targets[1:], late.search_values[1:])
    assert not torch.allclose(late.value_targets[0], late.search_values[0])
