"""The batched env against the original HumanoidBench, and its mechanics (reset, limits, errors).

Step parity: from every recorded pre-step state (qpos, qvel, qacc_warmstart) and action, one env step
of all 400 recorded (episode, step) pairs at once, as 400 worlds. The recordings come from MuJoCo
3.1.6; MuJoCo-Warp (float32) follows MuJoCo 4, whose contact dynamics differ, so the comparison is a
distribution (spec/envs.md): measured on h1-walk here, reward |diff| median 1e-16, p90 1.2e-4,
p99 2.1e-3, max 9.8e-3 (the spec's MuJoCo 4 C figures); contact-discount tasks (pole, hurdle, maze)
have a tail where a contact flips the 0.1 discount (p99 <= 6e-2, max <= 0.11). The bounds below are
those measurements with about 2x headroom. Controls are exact (float32 un-normalisation).
"""
import pathlib

import numpy as np
import pytest
import torch

from ezm_gpu.envs import rewards
from ezm_gpu.envs.env import Capacity, CapacityOverflowError, RESET_NOISE, hashed_uniform, make
from ezm_gpu.envs.scene import MEDIUM_TASKS
from host_sync import forbid_host_sync

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
ASSETS, FIXTURES = SHARED / "humanoidbench", SHARED / "fixtures" / "humanoidbench"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir() or not ASSETS.is_dir(), reason="../shared is not present")

# reward |diff| bounds: (p90, p99, max); terminated: allowed mismatching steps of 400 (threshold crossings)
BOUNDS = {task: (5e-3, 1e-2, 6e-2, 0) for task in MEDIUM_TASKS}
BOUNDS.update(stair=(5e-3, 1e-2, 6e-2, 4), pole=(8e-3, 0.1, 0.2, 0), hurdle=(5e-3, 1e-2, 0.2, 0),
              maze=(5e-3, 0.12, 0.2, 0))


def _fixture(task):
    z = np.load(FIXTURES / f"h1-{task}-v0.npz")
    return {k: z[k] for k in z.files}


def _replay_env(task, z, **kwargs):
    """An env of E*T worlds holding every recorded pre-step state (and maze stage)."""
    E, T, nu = z["action"].shape
    W, nq, nv = E * T, int(z["meta_nq"]), int(z["meta_nv"])
    env = make(f"h1-{task}", W, device="cpu", root=ASSETS, **kwargs)
    pre = torch.from_numpy(z["state_pre"].reshape(W, -1)).float()
    state = None
    if task == "maze":  # the stage before step t is the recorded stage after step t-1 (0 at t = 0)
        stage = torch.from_numpy(np.concatenate([np.zeros((E, 1)), z["task_maze_stage"][:, :-1]], 1).reshape(W)).long()
        state = {"maze_stage": stage, "move_direction": rewards.maze_move_direction(stage, torch.float32)}
    env.set_state(pre[:, 1:1 + nq], pre[:, 1 + nq:1 + nq + nv],
                  torch.from_numpy(z["warmstart_pre"].reshape(W, nv)).float(), state)
    return env, torch.from_numpy(z["action"].reshape(W, nu))


@pytest.mark.parametrize("task", MEDIUM_TASKS)
def test_one_step_from_every_recorded_state(task):
    z = _fixture(task)
    env, action = _replay_env(task, z)
    W = action.shape[0]
    applied, physics = [], env._physics
    env._physics = lambda: (applied.append(env._ctrl.clone()), physics())  # ctrl before auto-reset clears it
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_array_equal(applied[0].numpy(), z["ctrl"].reshape(W, -1))  # float32 un-normalisation
    diff = np.abs(reward.double().numpy() - z["reward"].reshape(W))
    p90, p99, worst, flips = BOUNDS[task]
    stats = f"{task}: reward |diff| p90 {np.percentile(diff, 90):.2e} p99 {np.percentile(diff, 99):.2e} max {diff.max():.2e}"
    print(stats)
    assert np.percentile(diff, 90) <= p90 and np.percentile(diff, 99) <= p99 and diff.max() <= worst, stats
    for key in [k for k in z if k.startswith("info_")]:  # every reward term is there and close
        term = np.abs(info[key[5:]].double().numpy() - z[key].reshape(W))
        assert np.percentile(term, 90) <= max(p90, 1e-2), (key, np.percentile(term, 90))
    assert (terminated.numpy() != z["terminated"].reshape(W)).sum() <= flips
    post = np.concatenate([z["qpos_post"].reshape(W, -1), z["qvel_post"].reshape(W, -1)], 1)
    state_diff = np.abs(info["final_observation"].numpy() - post).max(1)
    assert np.median(state_diff) <= 0.3, np.median(state_diff)  # measured 0.08-0.16 (qvel dominates)
    assert not info["diverged"].any() and not bool(truncated.any())
    env.check()  # no capacity overflow


def test_model_metadata_and_spaces():
    env = make("h1-walk-v0", 2, device="cpu", root=ASSETS)
    assert (env.obs_dim, env.action_dim) == (51, 19)
    z = _fixture("walk")
    np.testing.assert_array_equal(env._ctrl_low.numpy(), z["meta_action_low"])
    np.testing.assert_array_equal(env._ctrl_high.numpy(), z["meta_action_high"])


def test_reset_is_keyframe_plus_noise_and_seeded():
    z = _fixture("walk")
    a = make("h1-walk", 64, device="cpu", seed=3, root=ASSETS).reset()
    b = make("h1-walk", 64, device="cpu", seed=3, root=ASSETS).reset()
    c = make("h1-walk", 64, device="cpu", seed=4, root=ASSETS).reset()
    assert torch.equal(a, b) and not torch.equal(a, c)
    nq = int(z["meta_nq"])
    noise = a[:, :nq] - torch.from_numpy(z["meta_key_qpos"]).float()
    assert noise.abs().max() <= RESET_NOISE + 1e-6 and noise.abs().max() > 0.9 * RESET_NOISE
    assert abs(float(noise.mean())) < 1e-3 and abs(float(noise.std()) - RESET_NOISE / 3 ** 0.5) < 5e-4  # U(-.01,.01)
    assert torch.equal(a[:, nq:], torch.zeros_like(a[:, nq:]))
    # A world's draw depends on (seed, world, reset count) only, not on which other worlds reset.
    world, count = torch.tensor([5]), torch.tensor([0])
    alone = hashed_uniform(3, world, count, nq, -RESET_NOISE, RESET_NOISE)
    torch.testing.assert_close(alone[0] + torch.from_numpy(z["meta_key_qpos"]).float(), a[5, :nq])


def test_time_limit_auto_reset_and_episode_stats():
    env = make("h1-stand", 3, device="cpu", seed=0, root=ASSETS, time_limit=3)
    first = env.reset()
    hold = torch.from_numpy(_fixture("stand")["meta_hold_action"]).float().expand(3, -1)
    returns = torch.zeros(3)
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(hold)
        returns += reward
        if t < 2:
            assert not truncated.any() and torch.equal(info["episode_length"], torch.full((3,), t + 1))
    assert truncated.all() and not terminated.any() and info["done"].all()
    assert torch.equal(info["episode_length"], torch.full((3,), 3))
    torch.testing.assert_close(info["episode_return"], returns)
    assert not torch.equal(info["final_observation"], obs)  # obs is the new episode's first observation
    assert torch.equal(obs[:, 26:], torch.zeros(3, 25)) and not torch.equal(obs, first)  # fresh noise draw
    assert torch.equal(env.episode_length, torch.zeros(3, dtype=torch.int64))


def test_termination_and_ignore_termination():
    """Two recorded states of h1-walk, one whose step fell (qpos[2] < 0.2) and one that did not."""
    z = _fixture("walk")
    E, T, nu = z["action"].shape
    fell = np.argwhere(z["terminated"].reshape(-1))[0, 0]
    stood = np.argwhere(~z["terminated"].reshape(-1))[0, 0]
    pick = [stood, fell]
    nq, nv = int(z["meta_nq"]), int(z["meta_nv"])
    pre = torch.from_numpy(z["state_pre"].reshape(E * T, -1)[pick]).float()
    for ignore in (False, True):
        env = make("h1-walk", 2, device="cpu", root=ASSETS, ignore_termination=ignore)
        env.set_state(pre[:, 1:1 + nq], pre[:, 1 + nq:1 + nq + nv],
                      torch.from_numpy(z["warmstart_pre"].reshape(E * T, nv)[pick]).float())
        _, _, terminated, truncated, info = env.step(torch.from_numpy(z["action"].reshape(E * T, nu)[pick]))
        assert terminated.tolist() == ([False, False] if ignore else [False, True])
        assert info["done"].tolist() == terminated.tolist() and not truncated.any()
        assert float(info["final_observation"][1, 2]) < 0.2  # it did fall in both protocols


def test_diverged_world_is_reset_and_counted():
    env = make("h1-walk", 3, device="cpu", root=ASSETS)
    obs = env.reset()
    qvel = obs[:, 26:].clone()
    qvel[1, 7] = float("nan")
    env.set_state(obs[:, :26], qvel)
    obs, reward, terminated, truncated, info = env.step(torch.zeros(3, 19))
    assert info["diverged"].tolist() == [False, True, False] and truncated.tolist() == [False, True, False]
    assert torch.isfinite(obs).all() and float(reward[1]) == 0.0 and int(env.bad_world_resets) == 1
    obs, *_ = env.step(torch.zeros(3, 19))  # the run continues with finite states
    assert torch.isfinite(obs).all()


def test_contacts_are_grouped_by_world():
    z = _fixture("hurdle")
    env, action = _replay_env("hurdle", z)
    env.step(action)
    rows, missed = env._contacts_by_world()
    n = int(env._nacon[0])
    expected = [[] for _ in range(env.num_envs)]
    for geom, world in zip(env._contact_geom[:n].tolist(), env._contact_world[:n].tolist()):
        expected[world].append(tuple(geom))
    for world in range(env.num_envs):
        got = [tuple(p) for p in rows[world].tolist() if p[0] >= 0]
        assert sorted(got) == sorted(expected[world]), world
    assert not missed.any()


def test_capacity_overflow_is_an_error():
    z = _fixture("walk")
    env, action = _replay_env("walk", z, capacity=Capacity(contacts=2, constraints=16))
    env.step(action, validate=False)  # fallen robots in the recording have more than 2 contacts
    with pytest.raises(CapacityOverflowError, match="overflowed its capacity .*contacts 2/world"):
        env.check()
    with pytest.raises(CapacityOverflowError):
        env.step(action)  # validate=True checks before stepping again


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(task="h1-fly"), ValueError, r"unknown task 'h1-fly'; valid ids .*h1-walk"),
    (dict(num_envs=0), ValueError, "num_envs must be an integer >= 1"),
    (dict(time_limit=0), ValueError, "time_limit must be an integer >= 1"),
    (dict(device="tpu"), (ValueError, RuntimeError), "tpu"),
])
def test_bad_construction(kwargs, error, message):
    args = dict(task="h1-walk", num_envs=2, device="cpu", root=ASSETS)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        make(**args)


def test_bad_actions_and_clipping():
    env = make("h1-walk", 2, device="cpu", root=ASSETS)
    env.reset()
    with pytest.raises(ValueError, match=r"action must have shape \[2, 19\] for h1-walk, got \[2, 18\]"):
        env.step(torch.zeros(2, 18))
    with pytest.raises(TypeError, match="floating-point"):
        env.step(torch.zeros(2, 19, dtype=torch.int64))
    with pytest.raises(ValueError, match="is on meta"):
        env.step(torch.zeros(2, 19, device="meta"))
    with pytest.raises(ValueError, match="action contains NaN"):
        env.step(torch.full((2, 19), float("nan")))
    env.step(torch.full((2, 19), 5.0))  # clipped to 1: ctrl is the top of every ctrlrange
    torch.testing.assert_close(env._ctrl, env._ctrl_high.expand(2, -1), rtol=0, atol=1e-6)  # (1+1)/2*(h-l)+l


def test_step_does_no_host_sync(monkeypatch):
    """With validate=False a step (physics, readout, rewards, auto-reset) never reads back to the host."""
    z = _fixture("maze")
    env, action = _replay_env("maze", z, time_limit=1)  # every world resets: the reset path runs too

    forbid_host_sync(monkeypatch, "env.step")
    obs, reward, terminated, truncated, info = env.step(action, validate=False)
    monkeypatch.undo()
    assert truncated.all() and torch.isfinite(obs).all()
