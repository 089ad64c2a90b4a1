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
