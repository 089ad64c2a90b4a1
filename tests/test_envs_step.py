"""The batched env against the original HumanoidBench, and its mechanics (reset, limits, errors).

Step parity: from every recorded pre-step state (qpos, qvel, qacc_warmstart) and action, one env step
of all 400 recorded (episode, step) pairs at once, as 400 worlds. The recordings come from MuJoCo
3.1.6; MuJoCo-Warp (float32) follows MuJoCo 4, whose contact dynamics differ, so the comparison is a
distribution (spec/envs.md): measured on h1-walk here, reward |diff| median 1e-16, p90 1.2e-4,
p99 2.1e-3, max 9.8e-3 (the spec's MuJoCo 4 C figures); contact-discount tasks (pole, hurdle, maze)
have a tail where a contact flips the 0.1 discount (p99 <= 6e-2, max <= 0.11). The bounds below are
those measurements with about 2x headroom. Controls are exact (float32 un-normalisation).

The same test runs over every recording of both robots: h1's medium set and h1hand's 14 hard-set tasks
(measured per task in BOUNDS). It also compares the readouts the hard-set rewards add (left hand site,
pelvis upright, sit's chair body) with what HumanoidBench's reward code read, and reach's 157-entry
observation (qpos ⊕ qvel ⊕ left hand ⊕ goal), with the recorded goals set as task state.
"""
import dataclasses

import numpy as np
import pytest
import torch

from ezm_gpu.envs import rewards
from ezm_gpu.envs.env import Capacity, CapacityOverflowError, RESET_NOISE, hashed_uniform, make
from ezm_gpu.envs.scene import HARD_TASKS, MEDIUM_TASKS
from hb_fixtures import ASSETS, load_fixture as _fixture, requires_shared
from host_sync import forbid_host_sync

pytestmark = requires_shared


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Step-parity bounds of one task: reward |diff| p90/p99/max; terminated: allowed mismatching steps
    of 400 (threshold crossings, contact flips); median over worlds of the max |diff| of qpos ⊕ qvel;
    p90 of each reward term's |diff|."""

    p90: float = 5e-3
    p99: float = 1e-2
    worst: float = 6e-2
    flips: int = 0
    state_median: float = 0.3
    terms: float = 1e-2  # p90 of every reward term's |diff| (reach's motion_penalty: relative)


BOUNDS = {f"h1-{task}": Bounds() for task in MEDIUM_TASKS}
BOUNDS.update({"h1-stair": Bounds(flips=4), "h1-pole": Bounds(8e-3, 0.1, 0.2), "h1-hurdle": Bounds(worst=0.2),
               "h1-maze": Bounds(p99=0.12, worst=0.2)})
# h1hand (H1 + Shadow hands, nv 75-87), measured on all 400 recorded steps of each task (reward |diff|
# p90 / p99 / max; terminated flips; state median): stand 1.9e-4 / 1.0e-3 / 2.1e-3; walk 4.7e-5 / 2.4e-3 /
# 1.8e-2; run 4.4e-5 / 4.7e-4 / 3.6e-3; stair 1.5e-4 / 3.6e-3 / 1.8e-2; crawl 4.9e-4 / 5.4e-3 / 1.4e-2;
# pole 2.7e-3 / 0.45 / 0.46 (a pole contact flips the 0.1 discount); slide 9.4e-5 / 2.6e-3 / 1.8e-2;
# hurdle 1.6e-4 / 0.12 / 0.14 and maze 3.3e-5 / 6.7e-2 / 0.11 (wall contact flips); sit_simple 5.7e-4 /
# 2.2e-3 / 1.5e-2; sit_hard 1.3e-4 / 8.6e-4 / 1.4e-2; balance_simple 1.5e-3 / 4.9e-3 / 8.9e-3, 1 flip
# (a board/floor contact), state median 0.75; balance_hard 1.2e-3 / 3.7e-3 / 9.3e-3, state median 0.60;
# reach 3.0e-3 / 2.3e-2 / 0.18 (its motion penalty sums qvel², and qvel differs most); state medians of
# the others 0.15-0.22. Reward terms p90 <= 6.9e-3 (pole's move), reach's motion_penalty 1.0e-2 relative.
_H1HAND = Bounds(state_median=0.45)
BOUNDS.update({f"h1hand-{task}": _H1HAND for task in HARD_TASKS})
BOUNDS.update({
    "h1hand-stand": dataclasses.replace(_H1HAND, p90=4e-4, p99=2e-3, worst=5e-3),
    "h1hand-walk": dataclasses.replace(_H1HAND, p90=1e-4, p99=5e-3, worst=4e-2),
    "h1hand-run": dataclasses.replace(_H1HAND, p90=1e-4, p99=1e-3, worst=8e-3),
    "h1hand-stair": dataclasses.replace(_H1HAND, p90=3e-4, p99=8e-3, worst=4e-2),
    "h1hand-crawl": dataclasses.replace(_H1HAND, p90=1e-3, p99=1.2e-2, worst=3e-2),
    "h1hand-pole": dataclasses.replace(_H1HAND, p90=6e-3, p99=0.9, worst=0.95),
    "h1hand-slide": dataclasses.replace(_H1HAND, p90=2e-4, p99=5e-3, worst=4e-2),
    "h1hand-hurdle": dataclasses.replace(_H1HAND, p90=4e-4, p99=0.25, worst=0.3),
    "h1hand-maze": dataclasses.replace(_H1HAND, p90=1e-4, p99=0.15, worst=0.25),
    "h1hand-sit_simple": dataclasses.replace(_H1HAND, p90=1.2e-3, p99=5e-3, worst=3e-2),
    "h1hand-sit_hard": dataclasses.replace(_H1HAND, p90=3e-4, p99=2e-3, worst=3e-2),
    "h1hand-balance_simple": Bounds(p90=3e-3, p99=1e-2, worst=2e-2, flips=2, state_median=1.5),
    "h1hand-balance_hard": Bounds(p90=2.5e-3, p99=8e-3, worst=2e-2, flips=2, state_median=1.2),
    "h1hand-reach": dataclasses.replace(_H1HAND, p90=6e-3, p99=5e-2, worst=0.36, terms=2e-2),
})
PARITY_TASKS = tuple(BOUNDS)


def _replay_env(task, z, **kwargs):
    """An env of E*T worlds holding every recorded pre-step state (and task state: maze stage, reach
    goal)."""
    E, T, nu = z["action"].shape
    W, nq, nv = E * T, int(z["meta_nq"]), int(z["meta_nv"])
    env = make(task, W, device="cpu", root=ASSETS, **kwargs)
    pre = torch.from_numpy(z["state_pre"].reshape(W, -1)).float()
    state = None
    if task.endswith("-maze"):  # the stage before step t is the recorded stage after step t-1 (0 at t = 0)
        stage = torch.from_numpy(np.concatenate([np.zeros((E, 1)), z["task_maze_stage"][:, :-1]], 1).reshape(W)).long()
        state = {"maze_stage": stage, "move_direction": rewards.maze_move_direction(stage, torch.float32)}
    if task.endswith("-reach"):  # one goal per episode, drawn at its reset
        state = {"reach_goal": torch.from_numpy(np.repeat(z["task_goal"], T, axis=0)).float()}
    env.set_state(pre[:, 1:1 + nq], pre[:, 1 + nq:1 + nq + nv],
                  torch.from_numpy(z["warmstart_pre"].reshape(W, nv)).float(), state)
    return env, torch.from_numpy(z["action"].reshape(W, nu))


def _percentiles(diff):
    return np.percentile(diff, 50), np.percentile(diff, 90), np.percentile(diff, 99), diff.max()


@pytest.mark.parametrize("task", PARITY_TASKS)
def test_one_step_from_every_recorded_state(task):
    z = _fixture(task)
    env, action = _replay_env(task, z)
    W, nq, nv = action.shape[0], int(z["meta_nq"]), int(z["meta_nv"])
    applied, physics, read = [], env._physics, env._reward_inputs
    env._physics = lambda: (applied.append(env._ctrl.clone()), physics())  # ctrl before auto-reset clears it
    readouts = []

    def reward_inputs():  # keeps a copy of the readout (views of Warp's data, which a reset may recompute)
        inputs = read()
        readouts.append({f.name: None if getattr(inputs, f.name) is None else getattr(inputs, f.name).clone()
                         for f in dataclasses.fields(inputs)})
        return inputs

    env._reward_inputs = reward_inputs
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_array_equal(applied[0].numpy(), z["ctrl"].reshape(W, -1))  # float32 un-normalisation
    bounds = BOUNDS[task]
    diff = np.abs(reward.double().numpy() - z["reward"].reshape(W))
    _, p90, p99, worst = _percentiles(diff)
    stats = f"{task}: reward |diff| p90 {p90:.2e} p99 {p99:.2e} max {worst:.2e}"
    terms = {}
    for key in [k for k in z if k.startswith("info_")]:  # every reward term is there and close
        term = np.abs(info[key[5:]].double().numpy() - z[key].reshape(W))
        scale = 1 + np.abs(z[key].reshape(W)) if key == "info_motion_penalty" else 1  # sum of qvel²: relative
        terms[key[5:]] = np.percentile(term / scale, 90)
    stats += "; terms p90 " + ", ".join(f"{k} {v:.1e}" for k, v in terms.items())
    flips = int((terminated.numpy() != z["terminated"].reshape(W)).sum())
    post = np.concatenate([z["qpos_post"].reshape(W, -1), z["qvel_post"].reshape(W, -1)], 1)
    final = info["final_observation"].numpy()
    state_diff = np.abs(final[:, :nq + nv] - post).max(1)
    stats += f"; terminated flips {flips}; state |diff| median {np.median(state_diff):.3f}"
    # The readouts the hard-set rewards add, against what HumanoidBench's reward code read.
    readout = readouts[0]
    hand = np.abs(readout["left_hand_xpos"].numpy() - z["aux_left_hand_xpos"].reshape(W, 3)).max(1)
    upright = np.abs(readout["pelvis_upright"].numpy() - z["aux_pelvis_xmat_zz"].reshape(W))
    stats += f"; left hand |diff| median {np.median(hand):.1e}, pelvis upright {np.median(upright):.1e}"
    chair = None
    if "task_chair_xpos" in z:  # sit: body ``chair`` (fixed in sit_simple, a free body in sit_hard)
        chair = np.abs(readout["chair_xpos"].numpy() - z["task_chair_xpos"].reshape(W, 3)).max(1)
        stats += f", chair median {np.median(chair):.1e} p90 {np.percentile(chair, 90):.1e}"
    print(stats)
    assert p90 <= bounds.p90 and p99 <= bounds.p99 and worst <= bounds.worst, stats
    assert max(terms.values()) <= max(bounds.p90, bounds.terms), stats
    assert flips <= bounds.flips, stats
    assert np.median(state_diff) <= bounds.state_median, stats  # qvel dominates
    assert not info["diverged"].any() and not bool(truncated.any())
    env.check()  # no capacity overflow
    # measured medians: hand 2e-5 - 1.6e-4 (balance_simple), upright 1e-5 - 5.5e-5; sit_hard's free chair
    # median 1e-8, p90 2e-5 (sit_simple's is fixed: 0)
    assert np.median(hand) <= 4e-4 and np.median(upright) <= 1.2e-4, stats
    if chair is not None:
        assert np.median(chair) <= 1e-6 and np.percentile(chair, 90) <= 5e-5, stats
    else:
        assert readout["chair_xpos"] is None
    if task.endswith("-reach"):  # HumanoidBench's layout: qpos ⊕ qvel ⊕ left hand ⊕ goal
        assert final.shape[1] == nq + nv + 6 == int(z["meta_obs_dim"])
        np.testing.assert_array_equal(final[:, nq + nv:nq + nv + 3], readout["left_hand_xpos"].numpy())
        np.testing.assert_array_equal(final[:, -3:], np.repeat(z["task_goal"], z["action"].shape[1], 0).astype(np.float32))


def test_model_metadata_and_spaces():
    env = make("h1-walk-v0", 2, device="cpu", root=ASSETS)
    assert (env.obs_dim, env.action_dim) == (51, 19)
    z = _fixture("h1-walk")
    np.testing.assert_array_equal(env._ctrl_low.numpy(), z["meta_action_low"])
    np.testing.assert_array_equal(env._ctrl_high.numpy(), z["meta_action_high"])


def test_reset_is_keyframe_plus_noise_and_seeded():
    z = _fixture("h1-walk")
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
    hold = torch.from_numpy(_fixture("h1-stand")["meta_hold_action"]).float().expand(3, -1)
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
    z = _fixture("h1-walk")
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


def test_nan_action_without_validation_resets_the_world_as_diverged():
    """Unvalidated NaN actions (the no-sync training path) must not step on as if they were controls."""
    env = make("h1-walk", 3, device="cpu", root=ASSETS)
    env.reset()
    for _ in range(3):
        env.step(torch.zeros(3, 19))
    action = torch.zeros(3, 19)
    action[2, 4] = float("nan")
    obs, reward, terminated, truncated, info = env.step(action, validate=False)
    assert info["diverged"].tolist() == [False, False, True] and truncated.tolist() == [False, False, True]
    assert float(reward[2]) == 0.0 and int(env.bad_world_resets) == 1 and int(env.episode_length[2]) == 0
    assert int(info["episode_length"][2]) == 4 and torch.isfinite(obs).all()
    assert torch.isfinite(env.state_dict()["qvel"]).all()  # the NaN never reached the physics state
    with pytest.raises(ValueError, match="action contains NaN"):
        env.step(action)  # validated: refused


def test_unknown_device_names_the_allowed_ones():
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        make("h1-walk", 2, device="tpu", root=ASSETS)


def test_contacts_are_grouped_by_world():
    z = _fixture("h1-hurdle")
    env, action = _replay_env("h1-hurdle", z)
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
    z = _fixture("h1-walk")
    env, action = _replay_env("h1-walk", z, capacity=Capacity(contacts=2, constraints=16))
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


@pytest.mark.parametrize("task", ["h1-maze", "h1hand-reach"])
def test_step_does_no_host_sync(monkeypatch, task):
    """With validate=False a step (physics, readout, rewards, auto-reset: reach's goal draw and
    kinematics) never reads back to the host."""
    z = _fixture(task)
    env, action = _replay_env(task, z, time_limit=1)  # every world resets: the reset path runs too

    forbid_host_sync(monkeypatch, "env.step")
    obs, reward, terminated, truncated, info = env.step(action, validate=False)
    monkeypatch.undo()
    assert truncated.all() and torch.isfinite(obs).all()
