"""Task sets: worlds split across tasks, padded observations, action masks, routing of actions."""
import pathlib

import pytest
import torch

from ezm_gpu import envs

ASSETS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "humanoidbench"
pytestmark = pytest.mark.skipif(not ASSETS.is_dir(), reason="../shared/humanoidbench is not present")


def test_medium_set_layout_and_routing():
    tasks = envs.make_set("medium", 11, device="cpu", seed=2, root=ASSETS)
    assert tasks.tasks == [f"h1-{t}" for t in envs.MEDIUM_TASKS]
    assert [s.stop - s.start for s in tasks.slices] == [2, 2] + [1] * 7  # 11 worlds over 9 tasks
    assert tasks.task_ids.tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]
    assert (tasks.obs_dim, tasks.action_dim) == (51, 19) and tasks.action_mask.all()
    obs = tasks.reset()
    assert obs.shape == (11, 51)
    action = torch.rand(11, 19) * 2 - 1
    obs, reward, terminated, truncated, info = tasks.step(action)
    assert obs.shape == (11, 51) and reward.shape == (11,) and len(info["terms"]) == 9
    assert set(info["terms"][8]) >= {"stage_convert_reward", "wall_collision_discount"}  # maze's terms
    # The set's walk worlds behave exactly like a lone walk env with the same seed and actions.
    walk = envs.make("h1-walk", 2, device="cpu", seed=2 * 1000 + 1, root=ASSETS)
    walk.reset()
    walk_obs, walk_reward, *_ = walk.step(action[2:4])
    assert torch.equal(walk_obs, obs[2:4]) and torch.equal(walk_reward, reward[2:4])


def test_list_of_tasks_and_padding():
    tasks = envs.make_set(["h1-stand", "h1-pole-v0"], 3, device="cpu", root=ASSETS)
    assert tasks.tasks == ["h1-stand", "h1-pole"] and tasks.task_ids.tolist() == [0, 0, 1]
    # The medium set's tasks share obs 51; a wider set (h1hand: 151) pads with zeros on the right.
    tasks.obs_dim = 60
    obs = tasks.reset()
    assert obs.shape == (3, 60) and torch.equal(obs[:, 51:], torch.zeros(3, 9)) and obs[:, :51].abs().sum() > 0


@pytest.mark.parametrize("tasks, num_envs, message", [
    ("hardest", 4, "unknown task set 'hardest'; known sets: medium"),
    ("medium", 8, r"num_envs must be an integer >= the number of tasks \(9\)"),
    (["h1-walk", "h1-walk"], 4, "tasks repeat"),
    (["h1-fly"], 4, "unknown task 'h1-fly'"),
])
def test_bad_sets(tasks, num_envs, message):
    with pytest.raises(ValueError, match=message):
        envs.make_set(tasks, num_envs, device="cpu", root=ASSETS)


def test_state_dict_round_trip_continues_identically():
    a = envs.make_set(["cartpole-balance", "cartpole-swingup"], 4, device="cpu", seed=5)
    a.reset()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a.step(torch.rand(4, 1, generator=g) * 2 - 1)
    saved = a.state_dict()
    actions = [torch.rand(4, 1, generator=g) * 2 - 1 for _ in range(4)]
    expected = [a.step(x)[0] for x in actions]
    b = envs.make_set(["cartpole-balance", "cartpole-swingup"], 4, device="cpu", seed=5)
    b.load_state_dict(saved)
    assert all(torch.equal(b.step(x)[0], e) for x, e in zip(actions, expected))
    b.set_time_limit(2)
    assert all(env.time_limit == 2 for env in b.envs)
    with pytest.raises(ValueError, match="cannot load into"):
        envs.make_set(["cartpole-balance"], 2, device="cpu").load_state_dict(saved)
