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
    assert saturated_tasks(recent, count).tolist() == [True, False, False, False]


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


def test_curriculum_switches_every_task_at_40_percent_and_saturated_tasks_early():
    from ezm_gpu import envs
    from ezm_gpu.curriculum import SATURATION_WINDOW, Curriculum

    world = envs.make_set("cartpole", 4, device="cpu", time_limit=500)
    curriculum = Curriculum(world, episode_length=500, decisions=100)
    none = torch.zeros(4, dtype=torch.bool)
    # task 1 finishes SATURATION_WINDOW episodes scoring 900-905: saturated; task 0 scores 10: not
    for i in range(SATURATION_WINDOW):
        finished = torch.tensor([False, False, True, False])
        curriculum.record(finished, torch.tensor([0.0, 0.0, 900.0 + i % 6, 0.0]), decisions=i + 1)
    curriculum.record(torch.tensor([True, False, False, False]), torch.full((4,), 10.0), decisions=11)
    assert world.time_limits == [500, 500]  # rings are read only where a log row is written
    curriculum.switch_saturated()
    assert world.time_limits == [500, 1000]
    curriculum.record(none, torch.zeros(4), decisions=39)
    assert world.time_limits == [500, 1000]
    curriculum.record(none, torch.zeros(4), decisions=40)  # 40% of 100 decisions: every task
    assert world.time_limits == [1000, 1000]
    restored = Curriculum(world, episode_length=500, decisions=100)
    restored.load_state_dict(curriculum.state_dict())
    assert torch.equal(restored.recent, curriculum.recent) and torch.equal(restored.recent_count, curriculum.recent_count)


def test_episode_returns_skip_staggered_first_episodes_and_reset_after_each_read():
    from ezm_gpu.collect import EpisodeReturns

    returns = EpisodeReturns(torch.tensor([0, 0, 1, 1]), num_tasks=2, staggered=True)
    done = torch.tensor([True, False, True, True])
    counted = returns.record(done, torch.tensor([5.0, 0.0, 7.0, 9.0]))
    assert not counted.any() and returns.take_means(["a", "b"]) == {}  # shortened first episodes: no score
    counted = returns.record(torch.tensor([True, True, False, True]), torch.tensor([10.0, 20.0, 0.0, 30.0]))
    assert counted.tolist() == [True, False, False, True]  # world 1's first episode just ended: no score
    assert returns.take_means(["a", "b"]) == {"a": 10.0, "b": 30.0}
    assert returns.take_means(["a", "b"]) == {}  # read once


def test_collector_acts_at_random_during_the_warm_up_then_searches():
    """The warm-up (start_transitions per task) acts uniformly without searching, then the collector searches
    with the model it is given; every decision stores one transition per world."""
    from ezm_gpu import envs
    from ezm_gpu.collect import Collector, EpisodeReturns
    from ezm_gpu.planning import SearchSettings
    from ezm_gpu.replay import ReplayBuffer, ReplayConfig

    world = envs.make_set("cartpole", 4, device="cpu", seed=0, time_limit=50)
    replay = ReplayBuffer(ReplayConfig(num_tasks=2, capacity=64, obs_dim=world.obs_dim, action_dim=world.action_dim,
                                       num_worlds=4, batch_size=2, unroll_steps=1, td_steps=1))
    returns = EpisodeReturns(world.task_ids, 2, staggered=False)
    collector = Collector(world, replay, SearchSettings(num_simulations=2, num_root_actions=2, root_wide=0,
                                                        num_top_actions=2, child_wide=0),
                          action_repeat=2, start_transitions=4, returns=returns, generator=torch.Generator().manual_seed(0))

    class NoSearch(torch.nn.Module):  # action masks only: a search would call initial_inference
        def action_mask(self, task_ids):
            return torch.ones(task_ids.shape[0], world.action_dim)

        def initial_inference(self, *args, **kwargs):
            raise RuntimeError("searched")

    collector.reset(stagger=False)
    for _ in range(2):  # 2 worlds per task x 2 decisions = the 4 warm-up transitions
        collector.collect(NoSearch())
    assert collector.decisions == 2 and collector.env_steps_per_task == 8
    assert replay.num_added().tolist() == [4, 4]
    with pytest.raises(RuntimeError, match="searched"):  # past the warm-up the model searches
        collector.collect(NoSearch())
