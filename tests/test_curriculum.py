"""EZ-M's episode-length curriculum: per-task rings of recent training returns and the saturation rule."""
import random

import pytest
import torch

from ezm_gpu.train import push_recent_returns, saturated_tasks


def test_rings_keep_each_task_s_last_returns_against_a_list_model():
    rng = random.Random(0)
    tasks, window, worlds_per_task = 3, 4, 5
    task_ids = torch.arange(tasks).repeat_interleave(worlds_per_task)
    recent = torch.zeros(tasks, window)
    count = torch.zeros(tasks, dtype=torch.long)
    history = [[] for _ in range(tasks)]
    for step in range(40):
        done = torch.tensor([rng.random() < 0.4 for _ in task_ids])
        ret = torch.tensor([float(rng.randint(0, 999)) for _ in task_ids])
        push_recent_returns(recent, count, task_ids, done, ret)
        for w, t in enumerate(task_ids.tolist()):
            if done[w]:
                history[t].append(float(ret[w]))
        for t in range(tasks):
            assert int(count[t]) == len(history[t])
            assert sorted(recent[t, :min(window, len(history[t]))].tolist() if len(history[t]) < window
                          else recent[t].tolist()) == sorted(history[t][-window:])


def test_saturation_rule_is_the_release_s():
    recent = torch.tensor([[100.0, 105, 95, 99], [100.0, 150, 95, 99], [50.0, 52, 51, 50], [100.0, 105, 95, 99]])
    count = torch.tensor([4, 9, 4, 3])
    # task 0: spread 10 < 0.1 * 105 and min 95 > 60; task 1: spread too wide; task 2: min <= 60;
    # task 3: fewer than 4 returns yet.
    assert saturated_tasks(recent, count) == [0]


def test_set_time_limit_per_task():
    from ezm_gpu import envs

    world = envs.make_set("cartpole", 2, device="cpu", time_limit=500)
    world.set_time_limit(1000, task=1)
    assert world.time_limits == [500, 1000]
    world.set_time_limit(700)
    assert world.time_limits == [700, 700]
    with pytest.raises(ValueError, match=r"task index must lie in \[0, 2\), got 2"):
        world.set_time_limit(10, task=2)


def test_action_repeat_sums_rewards_until_the_episode_ends():
    """step_repeated against plain steps on an identical world: rewards summed within the decision, the
    first ended episode's final observation and return, and no reward from the next episode."""
    from ezm_gpu import envs
    from ezm_gpu.train import step_repeated

    repeated = envs.make_set("cartpole", 2, device="cpu", seed=3, time_limit=4)
    plain = envs.make_set("cartpole", 2, device="cpu", seed=3, time_limit=4)
    repeated.reset(), plain.reset()
    actions = torch.tensor([[0.3], [-0.7]])
    rewards, finals, returns = [], [], []
    for _ in range(6):
        obs, reward, _, _, info = plain.step(actions, validate=False)
        rewards.append(reward)
        finals.append(info["final_observation"])
        returns.append(info["episode_return"])
    obs1, total1, _, info1 = step_repeated(repeated, actions, 3)  # steps 1-3
    assert torch.allclose(total1, rewards[0] + rewards[1] + rewards[2]) and not info1["done"].any()
    obs2, total2, _, info2 = step_repeated(repeated, actions, 3)  # steps 4 (episode ends), 5-6 (next episode)
    assert info2["done"].all()
    assert torch.allclose(total2, rewards[3])  # nothing from the new episode
    assert torch.equal(info2["final_observation"], finals[3])
    assert torch.allclose(info2["episode_return"], returns[3])
    assert torch.allclose(info2["episode_return"], total1 + total2)
    assert torch.equal(obs2, obs)  # the new episode went on for the remaining repeats
