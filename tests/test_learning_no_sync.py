"""Sampling, target computation (reanalysis) and the loss read nothing back to the host."""
import torch

from ezm_gpu.planning import SearchSettings
from ezm_gpu.loss import UnrollTargets, ezm_loss
from ezm_gpu.learner import unroll
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.reanalyze import reanalyze
from host_sync import forbid_host_sync
from test_learner import ACT, OBS, TASKS, _filled_replay



def test_sample_targets_and_loss_without_host_sync(monkeypatch):
    torch.manual_seed(0)
    replay = _filled_replay()
    model = EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))
    g = torch.Generator().manual_seed(0)

    forbid_host_sync(monkeypatch, "sample/targets/loss")
    batch = replay.sample(g)
    targets = reanalyze(model.eval(), batch, SearchSettings(num_simulations=4, num_top_actions=4), 5, 5,
                        num_updates=60_000, generator=g)
    predictions, _ = unroll(model.train(), batch, targets, 5, g)
    loss, terms = ezm_loss(predictions, UnrollTargets(targets.value_targets.T, targets.reward_targets.T,
                                                      batch.step_mask[:, :5].T, batch.weights), model.support, 0.99)
    monkeypatch.undo()
    assert torch.isfinite(loss) and set(terms) >= {"reward", "value", "policy"}
