"""Acting: one batched search over all worlds (the same as reanalysis' search), or uniform random actions."""
import pytest
import torch

from ezm_gpu.acting import act, random_worlds, uniform_actions
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings, search_positions

OBS, ACT, TASKS = 6, 3, 2
CONFIG = SearchSettings(num_simulations=4, num_top_actions=4)
TASK_IDS = torch.tensor([0, 1, 1, 0, 1])
SYNCS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    masks = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # task 1 has 2 actuators
    return EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS), action_masks=masks).eval()


def _obs(seed=0):
    return torch.randn(len(TASK_IDS), OBS, generator=torch.Generator().manual_seed(seed))


def _valid(actions):
    assert actions.shape == (len(TASK_IDS), ACT)
    assert bool(((actions >= -1) & (actions <= 1)).all())
    assert bool((actions[TASK_IDS == 1, 2] == 0).all())  # masked dim of task 1


def test_actions_are_the_search_actions(model):
    out = act(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7))
    search, initial = search_positions(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7))
    _valid(out.actions)
    assert torch.equal(out.actions, search.action)
    assert torch.equal(out.root_value, search.root_value) and torch.equal(out.initial_value, initial)
    assert not bool(out.random.any()) and not out.actions.requires_grad
    # A different seed draws other candidates.
    assert not torch.equal(act(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(8)).actions,
                           out.actions)


def test_train_mode_model_is_searched_in_eval_and_restored(model):
    model.train()
    try:
        out = act(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7))
        assert model.training
    finally:
        model.eval()
    search, _ = search_positions(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7))
    assert torch.equal(out.actions, search.action)


def test_random_per_world(model):
    flags = torch.tensor([True, False, True, False, False])
    out = act(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7), random=flags)
    search, _ = search_positions(model, _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(7))
    _valid(out.actions)
    assert torch.equal(out.random, flags)
    assert torch.equal(out.actions[~flags], search.action[~flags])  # the search drew first, so it is unchanged
    assert not torch.equal(out.actions[flags], search.action[flags])
    assert torch.equal(out.root_value, search.root_value)  # the search ran for every world


def test_all_random_skips_the_search():
    class NoModel:
        training = False

        def action_mask(self, task_ids):
            return torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])[task_ids]

        def __getattr__(self, name):
            raise AssertionError(f"random=True must not use the model ({name})")

    out = act(NoModel(), _obs(), TASK_IDS, CONFIG, torch.Generator().manual_seed(1), random=True)
    _valid(out.actions)
    assert bool(out.random.all()) and out.root_value is None and out.initial_value is None


def test_uniform_actions_cover_the_valid_range():
    mask = torch.tensor([[1.0, 1.0, 0.0]]).expand(20_000, 3)
    a = uniform_actions(mask, torch.Generator().manual_seed(0))
    assert bool((a[:, 2] == 0).all()) and bool(((a[:, :2] >= -1) & (a[:, :2] < 1)).all())
    torch.testing.assert_close(a[:, :2].mean(0), torch.zeros(2), atol=0.02, rtol=0)
    torch.testing.assert_close(a[:, :2].var(0), torch.full((2,), 1 / 3), atol=0.02, rtol=0)


def test_random_worlds_follow_their_task_count():
    counts = torch.tensor([999, 1000])
    assert torch.equal(random_worlds(TASK_IDS, counts, random_steps=1000), TASK_IDS == 0)
    assert bool(random_worlds(TASK_IDS, counts, random_steps=1001).all())


def test_bad_inputs_are_rejected(model):
    with pytest.raises(ValueError, match="random must be"):
        act(model, _obs(), TASK_IDS, CONFIG, random=torch.tensor([True]))
    with pytest.raises(ValueError, match="task_ids"):
        act(model, _obs(), TASK_IDS[:2], CONFIG)


def test_act_without_host_sync(model, monkeypatch):
    flags = torch.tensor([True, False, True, False, False])
    obs, g = _obs(), torch.Generator().manual_seed(3)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    out = act(model, obs, TASK_IDS, CONFIG, g, random=flags)
    also = act(model, obs, TASK_IDS, CONFIG, g, random=False)
    monkeypatch.undo()
    _valid(out.actions)
    _valid(also.actions)
