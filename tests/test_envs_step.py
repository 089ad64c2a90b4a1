"""The batched env against the original HumanoidBench, and its mechanics (reset, limits, errors).

Step parity: from every recorded pre-step state (qpos, qvel, qacc_warmstart) and action, one env step
of all 400 recorded (episode, step) pairs at once, as 400 worlds, over every recording of both robots
(h1's medium set, h1hand's 14 hard-set tasks). The recordings come from MuJoCo 3.1.6; MuJoCo-Warp
(float32) follows MuJoCo 4, whose contact dynamics differ, so the comparison is a distribution bounded
by one rule for every task (``ezm_gpu.envs.parity.parity_violations``, which ``python -m ezm_gpu.selfcheck``
applies too): the spec's measured version gap (``docs/envs.md#the-step-parity-rule``, h1-walk), expressed as
a fraction of what one step changes on the same recording, times one margin;
threshold crossings (terminations, the 0.1 contact discounts) allowed once per recorded state that lies
within a step of the threshold. No bound is per task. Controls are exact (float32 un-normalisation),
and so are the reward formulas (test_envs_rewards.py), so the gap is the physics'. The readouts the
hard-set rewards add (left hand site, pelvis upright, sit's chair body) and reach's 157-entry
observation (qpos ⊕ qvel ⊕ left hand ⊕ goal) are compared too.
"""
import functools

import numpy as np
import pytest
import torch
import warp as wp

from ezm_gpu.envs import parity, rewards
from ezm_gpu.envs.env import Capacity, CapacityOverflowError, RESET_NOISE, hashed_uniform, make
from ezm_gpu.envs.scene import HARD_TASKS, MEDIUM_TASKS
from ezm_gpu.envs.parity import MARGIN, SPEC_GAP
from hb_fixtures import ASSETS, load_fixture as _fixture, recorded_inputs, requires_shared
from host_sync import forbid_host_sync

pytestmark = requires_shared


PARITY_TASKS = tuple(f"h1-{task}" for task in MEDIUM_TASKS) + tuple(f"h1hand-{task}" for task in HARD_TASKS)


@functools.lru_cache(maxsize=None)
def _spec_fractions():
    """The spec's gap as a fraction of one step's change on the same recording (h1-walk): the state
    fraction (qvel gap median / qvel step change median) and the reward fractions at p90 and p99."""
    z = _fixture("h1-walk")
    nq, nv = int(z["meta_nq"]), int(z["meta_nv"])
    return parity.spec_fractions(parity.qvel_change(z["state_pre"][..., 1 + nq:1 + nq + nv], z["qvel_post"]),
                                 parity.step_change(z["reward"]))


def test_the_package_keeps_the_spec_fractions_of_the_recording():
    """``parity.SPEC_FRACTIONS`` (the rule where the recordings are absent: the selfcheck) is h1-walk's."""
    measured = _spec_fractions()
    for name in ("state", "p90", "p99"):
        assert getattr(parity.SPEC_FRACTIONS, name) == pytest.approx(getattr(measured, name), rel=1e-12), name


def _reference(task, z, task_state):
    """The recording as a ``parity.StepReference``: one step from each of its E x T recorded states."""
    nq, nv = int(z["meta_nq"]), int(z["meta_nv"])
    near = parity.near_termination(task, z["terminated"], recorded_inputs(z, torch.float64),
                                   z["state_pre"][..., 3].reshape(-1), z["meta_geom_names"], task_state)
    terms = {"reward": z["reward"], **{key[5:]: z[key] for key in z if key.startswith("info_")}}
    return parity.StepReference.from_trajectories(z["state_pre"][..., 1 + nq:1 + nq + nv], z["qvel_post"],
                                                  z["aux_head_z"], terms, z["terminated"], near)


def _parity_violations(task, z, reward, terminated, info, head_z, task_state):
    """Every departure of one env step from the recording beyond the version gap (``parity.parity_violations``,
    with the spec's fractions measured on the h1-walk recording)."""
    nq, nv = int(z["meta_nq"]), int(z["meta_nv"])
    reference = _reference(task, z, task_state)
    terms = {name: reward if name == "reward" else info[name] for name in reference.terms}
    return parity.parity_violations(reference, info["final_observation"][:, nq:nq + nv], head_z, terms, terminated,
                                    _spec_fractions())


def _replay_env(task, z, **kwargs):
    """An env of E*T worlds holding every recorded pre-step state (and task state: maze stage, reach
    goal); returns the env, the recorded actions [E*T, nu] and the task state set."""
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
    return env, torch.from_numpy(z["action"].reshape(W, nu)), state


@pytest.mark.parametrize("task", PARITY_TASKS)
def test_one_step_from_every_recorded_state(task):
    z = _fixture(task)
    env, action, task_state = _replay_env(task, z)
    W, nq, nv = action.shape[0], int(z["meta_nq"]), int(z["meta_nv"])
    obs, reward, terminated, truncated, info = env.step(action, readouts=True)
    readout = info["reward_inputs"]
    np.testing.assert_array_equal(info["ctrl"].numpy(), z["ctrl"].reshape(W, -1))  # float32 un-normalisation
    assert set(info) >= {k[5:] for k in z if k.startswith("info_")}  # every reward term is there
    violations = _parity_violations(task, z, reward, terminated, info, readout["head_z"], task_state)
    assert not violations, f"{task}: " + "; ".join(violations)
    assert not info["diverged"].any() and not bool(truncated.any())
    env.check()  # no capacity overflow
    # The readouts the hard-set rewards add, against what HumanoidBench's reward code read: site and body
    # positions under the same head-height rule (rotation entries as positions 1 m from the axis).
    final = info["final_observation"].numpy()
    hand = np.abs(readout["left_hand_xpos"].numpy() - z["aux_left_hand_xpos"].reshape(W, 3)).max(1)
    upright = np.abs(readout["pelvis_upright"].numpy() - z["aux_pelvis_xmat_zz"].reshape(W))
    position_median = MARGIN * 4 * SPEC_GAP["head_median"]  # up to the 4x state scale of the balance boards
    assert np.median(hand) <= position_median and np.median(upright) <= position_median, (hand, upright)
    if "task_chair_xpos" in z:  # sit: body ``chair`` (fixed in sit_simple, a free body in sit_hard)
        chair = np.abs(readout["chair_xpos"].numpy() - z["task_chair_xpos"].reshape(W, 3)).max(1)
        assert np.median(chair) <= position_median and chair.max() <= MARGIN * SPEC_GAP["head_max"], chair
    else:
        assert readout["chair_xpos"] is None
    if task.endswith("-reach"):  # HumanoidBench's layout: qpos ⊕ qvel ⊕ left hand ⊕ goal
        assert final.shape[1] == nq + nv + 6 == int(z["meta_obs_dim"])
        np.testing.assert_array_equal(final[:, nq + nv:nq + nv + 3], readout["left_hand_xpos"].numpy())
        np.testing.assert_array_equal(final[:, -3:], np.repeat(z["task_goal"], z["action"].shape[1], 0).astype(np.float32))


@pytest.mark.parametrize("task, perturb", [("h1-walk", "ctrl"), ("h1hand-hurdle", "ctrl"), ("h1-walk", "gain")])
def test_parity_rule_rejects_a_wrong_step(task, perturb):
    """The rule is not so loose that anything passes: 5% off in the actions (a wrong action mapping) or
    20% off in the actuators' gains breaks it (5% in the gains moves qvel by 3-6% of a step's change,
    inside the margin: model parameters are compared exactly in test_envs_scene.py)."""
    z = _fixture(task)
    env, action, task_state = _replay_env(task, z)
    if perturb == "ctrl":
        action = (action * 0.95).clamp(-1, 1)
    else:
        env.model.actuator_gainprm.numpy()[..., 0] *= 1.2  # position servos: kp and the -kp bias
        env.model.actuator_biasprm.numpy()[..., 1] *= 1.2
    obs, reward, terminated, truncated, info = env.step(action, readouts=True)
    assert _parity_violations(task, z, reward, terminated, info, info["reward_inputs"]["head_z"], task_state)


def test_model_metadata_and_spaces():
    env = make("h1-walk-v0", 2, device="cpu", root=ASSETS)
    assert (env.obs_dim, env.action_dim) == (51, 19)
    z = _fixture("h1-walk")
    np.testing.assert_array_equal(env.ctrl_low.numpy(), z["meta_action_low"])
    np.testing.assert_array_equal(env.ctrl_high.numpy(), z["meta_action_high"])


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
    env, action, _ = _replay_env("h1-hurdle", z)
    env.step(action)
    rows, missed = env.contacts()
    n = int(wp.to_torch(env.data.nacon)[0])
    expected = [[] for _ in range(env.num_envs)]
    geoms, worlds = wp.to_torch(env.data.contact.geom), wp.to_torch(env.data.contact.worldid)  # Warp's global list
    for geom, world in zip(geoms[:n].tolist(), worlds[:n].tolist()):
        expected[world].append(tuple(geom))
    for world in range(env.num_envs):
        got = [tuple(p) for p in rows[world].tolist() if p[0] >= 0]
        assert sorted(got) == sorted(expected[world]), world
    assert not missed.any()


def test_capacity_overflow_is_an_error():
    z = _fixture("h1-walk")
    env, action, _ = _replay_env("h1-walk", z, capacity=Capacity(contacts=2, constraints=16))
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
    torch.testing.assert_close(env.ctrl, env.ctrl_high.expand(2, -1), rtol=0, atol=1e-6)  # (1+1)/2*(h-l)+l


@pytest.mark.parametrize("task", ["h1-maze", "h1hand-reach"])
def test_step_does_no_host_sync(monkeypatch, task):
    """With validate=False a step (physics, readout, rewards, auto-reset: reach's goal draw and
    kinematics) never reads back to the host."""
    z = _fixture(task)
    env, action, _ = _replay_env(task, z, time_limit=1)  # every world resets: the reset path runs too

    forbid_host_sync(monkeypatch, "env.step")
    obs, reward, terminated, truncated, info = env.step(action, validate=False)
    monkeypatch.undo()
    assert truncated.all() and torch.isfinite(obs).all()
