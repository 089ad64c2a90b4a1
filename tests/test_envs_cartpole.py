"""dm_control's cartpole (balance, swingup) on our MJCF: rewards, physics against MuJoCo C, resets,
time limit, no termination, no host sync, and a controller check that the tasks reward the right thing.

Needs no HumanoidBench assets (the resolver is made to fail where it matters). CPU only.
"""
import math

import mujoco
import numpy as np
import pytest
import torch

from ezm_gpu import envs
from ezm_gpu.envs import assets, scene
from ezm_gpu.envs.cartpole import (BALANCE_ANGLE_RANGE, BALANCE_CART_RANGE, CARTPOLE_XML, CartpoleEnv,
                                   cartpole_reward)
from host_sync import forbid_host_sync

# A float32 RK4 step of MuJoCo-Warp against MuJoCo C's float64 step from the same float32 state.
QPOS_ATOL, QVEL_ATOL = 1e-6, 1e-5  # measured max: 1.1e-7, 1.7e-7
# PD gains on (x, θ, ẋ, θ̇) that balance dm_control's cartpole (found by a grid search in MuJoCo C).
PD_GAINS = (0.5, 5.0, 2.0, 2.0)


def _r(x=0.0, cos=1.0, w=0.0, u=0.0):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    reward, terms = cartpole_reward(t(x), t(cos), t(w), t(u))
    return float(reward), {k: float(v) for k, v in terms.items()}


# --------------------------------------------------------------------------------------------------
def test_reward_on_hand_computed_states():
    assert _r() == (1.0, dict(upright=1.0, centered=1.0, small_control=1.0, small_velocity=1.0))
    reward, terms = _r(cos=-1.0)  # pole down
    assert terms["upright"] == 0.0 and reward == 0.0
    reward, terms = _r(cos=0.0)  # horizontal
    assert terms["upright"] == 0.5 and reward == 0.5
    # tolerance at the margin is 0.1 (gaussian): (1 + 0.1) / 2
    assert _r(x=2.0)[1]["centered"] == pytest.approx(0.55, abs=1e-12)
    assert _r(x=-2.0)[1]["centered"] == pytest.approx(0.55, abs=1e-12)
    assert _r(w=5.0)[1]["small_velocity"] == pytest.approx(0.55, abs=1e-12)
    # gaussian tolerance at half the margin: 0.1 ** 0.25
    assert _r(x=1.0)[1]["centered"] == pytest.approx((1 + 0.1 ** 0.25) / 2, abs=1e-12)
    # quadratic, value 0 at the margin: 1 - u^2 inside, 0 at |u| >= 1 -> small_control in [0.8, 1]
    assert _r(u=0.5)[1]["small_control"] == pytest.approx((4 + 0.75) / 5, abs=1e-12)
    assert _r(u=-1.0)[1]["small_control"] == pytest.approx(0.8, abs=1e-12)
    reward, _ = _r(x=2.0, cos=0.0, w=5.0, u=0.5)  # the product of the four factors
    assert reward == pytest.approx(0.5 * 0.95 * 0.55 * 0.55, abs=1e-12)


def test_env_reward_is_the_formula_on_the_post_step_state():
    env = envs.make("cartpole-swingup", 8, device="cpu", seed=1)
    env.reset()
    action = torch.linspace(-1.5, 1.5, 8)[:, None]  # includes clipped values
    obs, reward, terminated, truncated, info = env.step(action)
    final = info["final_observation"]
    expected, terms = cartpole_reward(final[:, 0], final[:, 1], final[:, 4], action[:, 0].clamp(-1, 1))
    torch.testing.assert_close(reward, expected)
    for name, value in terms.items():
        torch.testing.assert_close(info[name], value)


# --------------------------------------------------------------------------------------------------
def _states(n, seed=0):
    """Random cartpole states, including some against the slider's limit and fast spins."""
    rng = np.random.default_rng(seed)
    qpos = np.stack([rng.uniform(-1.7, 1.7, n), rng.uniform(-math.pi, math.pi, n)], 1)
    qvel = np.stack([rng.normal(0, 1, n), rng.normal(0, 3, n)], 1)
    qpos[:4, 0], qvel[:4, 0] = [1.795, -1.795, 1.81, -1.81], [2.0, -2.0, 0.5, -0.5]  # at / past the limit
    return qpos.astype(np.float32), qvel.astype(np.float32), rng.uniform(-1, 1, (n, 1)).astype(np.float32)


def test_one_step_matches_mujoco_c():
    n = 32
    qpos, qvel, ctrl = _states(n)
    env = envs.make("cartpole-balance", n, device="cpu")
    env.set_state(torch.from_numpy(qpos), torch.from_numpy(qvel))
    obs, *_ = env.step(torch.from_numpy(ctrl))
    m = mujoco.MjModel.from_xml_string(CARTPOLE_XML)
    d = mujoco.MjData(m)
    assert (m.opt.timestep, m.opt.integrator, m.nu, float(m.actuator_gear[0, 0])) == (
        0.01, mujoco.mjtIntegrator.mjINT_RK4, 1, 10.0)
    for w in range(n):
        mujoco.mj_resetData(m, d)
        d.qpos[:], d.qvel[:], d.ctrl[:] = qpos[w], qvel[w], ctrl[w]
        mujoco.mj_step(m, d)
        np.testing.assert_allclose(env.qpos[w].numpy(), d.qpos, rtol=0, atol=QPOS_ATOL, err_msg=str(w))
        np.testing.assert_allclose(env.qvel[w].numpy(), d.qvel, rtol=0, atol=QVEL_ATOL, err_msg=str(w))
        # The observation is dm_control's: cart x, the pole's xmat zz and xz, then qvel.
        mujoco.mj_forward(m, d)
        pole = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "pole_1")
        zz, xz = d.xmat[pole][8], d.xmat[pole][2]
        np.testing.assert_allclose(obs[w].numpy(), [d.qpos[0], zz, xz, d.qvel[0], d.qvel[1]], rtol=0,
                                   atol=QVEL_ATOL, err_msg=str(w))
    assert (env.qpos[:, 0].abs() < 1.9).all()  # the limit holds the cart
    env.check()  # the limit's constraint row fits the capacity


def test_model_has_dm_control_physics():
    m = mujoco.MjModel.from_xml_string(CARTPOLE_XML)
    assert (m.nq, m.nv, m.nu) == (2, 2, 1)
    assert m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT
    np.testing.assert_allclose(m.body_mass[1:], [1.0, 0.1])
    np.testing.assert_allclose(m.jnt_range[0], [-1.8, 1.8])
    np.testing.assert_allclose(m.dof_damping, [5e-4, 2e-6])
    np.testing.assert_allclose(m.actuator_ctrlrange[0], [-1, 1])
    np.testing.assert_allclose(m.jnt_axis, [[1, 0, 0], [0, 1, 0]])


# --------------------------------------------------------------------------------------------------
def test_reset_distributions_and_seeding():
    W = 4096
    balance = envs.make("cartpole-balance", W, device="cpu", seed=5)
    balance.reset()
    x, theta = balance.qpos[:, 0], balance.qpos[:, 1]
    assert x.abs().max() <= BALANCE_CART_RANGE and x.abs().max() > 0.99 * BALANCE_CART_RANGE
    assert theta.abs().max() <= BALANCE_ANGLE_RANGE and theta.abs().max() > 0.99 * BALANCE_ANGLE_RANGE
    for values, half in ((x, BALANCE_CART_RANGE), (theta, BALANCE_ANGLE_RANGE)):  # U(-half, half)
        assert values.min() < -0.99 * half and abs(float(values.mean())) < 0.05 * half
        assert abs(float(values.std()) - half / 3 ** 0.5) < 0.03 * half
    swingup = envs.make("cartpole-swingup", W, device="cpu", seed=5)
    obs = swingup.reset()
    for values in (swingup.qpos[:, 0], swingup.qpos[:, 1] - math.pi, swingup.qvel[:, 0], swingup.qvel[:, 1],
                   balance.qvel[:, 0], balance.qvel[:, 1]):  # all 0.01 * N(0, 1)
        assert abs(float(values.mean())) < 1e-3 and abs(float(values.std()) - 0.01) < 5e-4
        assert 0.03 < float(values.abs().max()) < 0.06
    assert (obs[:, 1] < -0.99).all()  # pole down: cos θ ≈ -1
    # Same seed, same draws; another seed, other draws.
    again = envs.make("cartpole-swingup", W, device="cpu", seed=5).reset()
    other = envs.make("cartpole-swingup", W, device="cpu", seed=6).reset()
    assert torch.equal(obs, again) and not torch.equal(obs, other)
    # A world's draw depends on (seed, world, reset count), not on which other worlds reset.
    a = envs.make("cartpole-balance", 4, device="cpu", seed=2)
    b = envs.make("cartpole-balance", 4, device="cpu", seed=2)
    a.reset(), a.reset()
    b.reset()
    b.reset_worlds(torch.tensor([False, True, False, False]))
    assert torch.equal(a.qpos[1], b.qpos[1]) and not torch.equal(a.qpos[0], b.qpos[0])


def test_time_limit_auto_reset_and_no_termination():
    env = envs.make("cartpole-swingup", 3, device="cpu", seed=0, time_limit=5)
    assert env.time_limit == 5 and CartpoleEnv(
        "cartpole-balance", 1, device="cpu").time_limit == 1000  # dm_control: 10 s / 0.01 s
    first = env.reset()
    returns = torch.zeros(3)
    generator = torch.Generator().manual_seed(0)
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(torch.rand(3, 1, generator=generator) * 2 - 1)
        returns += reward
        assert not terminated.any()
        if t < 4:
            assert not truncated.any() and torch.equal(info["episode_length"], torch.full((3,), t + 1))
    assert truncated.all() and info["done"].all() and torch.equal(info["episode_length"], torch.full((3,), 5))
    torch.testing.assert_close(info["episode_return"], returns)
    assert not torch.equal(info["final_observation"], obs) and not torch.equal(obs, first)  # fresh draw
    assert torch.equal(env.episode_length, torch.zeros(3, dtype=torch.int64))
    # Never terminates, whatever the actions (bang-bang against the limits, spinning pole).
    env = envs.make("cartpole-swingup", 4, device="cpu", seed=0)
    env.reset()
    for t in range(60):
        sign = 1.0 if (t // 15) % 2 == 0 else -1.0
        _, _, terminated, truncated, info = env.step(torch.full((4, 1), sign))
        assert not terminated.any() and not truncated.any() and not info["done"].any()
    assert torch.equal(env.episode_length, torch.full((4,), 60))


def test_step_does_no_host_sync(monkeypatch):
    env = envs.make("cartpole-balance", 4, device="cpu", time_limit=1)  # every world resets in the step
    env.reset()
    action = torch.zeros(4, 1)
    env.step(action, validate=False)  # warm up (kernel loading)

    forbid_host_sync(monkeypatch, "env.step")
    obs, reward, terminated, truncated, info = env.step(action, validate=False)
    monkeypatch.undo()
    assert truncated.all() and torch.isfinite(obs).all()
    with pytest.raises(AssertionError, match="host synchronisation"):  # the patch does catch a read
        forbid_host_sync(monkeypatch, "env.step")
        env.step(action)  # validate=True reads one flag


def test_api_errors_and_no_assets(monkeypatch):
    def no_assets(*args, **kwargs):
        raise AssertionError("cartpole must not resolve HumanoidBench assets")

    monkeypatch.setattr(assets, "resolve_root", no_assets)  # scene finds HumanoidBench's scenes through assets
    env = envs.make("cartpole-balance-v0", 2, device="cpu", seed=0, root="/nonexistent")
    assert isinstance(env, CartpoleEnv) and str(env.task) == "cartpole-balance"
    assert (env.obs_dim, env.action_dim) == (5, 1)
    assert scene.load_mj_model("cartpole-swingup").nq == 2
    with pytest.raises(ValueError, match=r"action must have shape \[2, 1\] for cartpole-balance"):
        env.step(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="action contains NaN"):
        env.step(torch.full((2, 1), float("nan")))
    with pytest.raises(ValueError, match="unknown task 'cartpole-spin'.*cartpole-balance, cartpole-swingup"):
        envs.make("cartpole-spin", 2, device="cpu")
    with pytest.raises(ValueError, match="not a HumanoidBench task"):
        envs.HumanoidBenchEnv("cartpole-balance", 2, device="cpu")
    with pytest.raises(ValueError, match="not a cartpole task"):
        CartpoleEnv("h1-walk", 2, device="cpu")


def test_task_set_of_both_tasks():
    tasks = envs.make_set(["cartpole-balance", "cartpole-swingup"], 5, device="cpu", seed=3)
    assert tasks.tasks == ["cartpole-balance", "cartpole-swingup"] and tasks.task_ids.tolist() == [0, 0, 0, 1, 1]
    assert (tasks.obs_dim, tasks.action_dim) == (5, 1) and envs.TASK_SETS["cartpole"] == tuple(tasks.tasks)
    obs = tasks.reset()
    assert (obs[:3, 1] > 0.99).all() and (obs[3:, 1] < -0.99).all()  # balance up, swingup down
    action = torch.zeros(5, 1)
    obs, reward, terminated, truncated, info = tasks.step(action)
    assert obs.shape == (5, 5) and reward.shape == (5,) and set(info["terms"][1]) == {
        "upright", "centered", "small_control", "small_velocity"}
    lone = envs.make("cartpole-swingup", 2, device="cpu", seed=3 * 1000 + 1)
    lone.reset()
    lone_obs, lone_reward, *_ = lone.step(action[3:])
    assert torch.equal(lone_obs, obs[3:]) and torch.equal(lone_reward, reward[3:])
    tasks.check()


# --------------------------------------------------------------------------------------------------
def test_pd_controller_balances_and_zero_action_does_not_swing_up():
    env = envs.make("cartpole-balance", 16, device="cpu", seed=0)
    obs = env.reset()
    kx, kt, kv, kw = PD_GAINS
    rewards = []
    for _ in range(200):
        theta = torch.atan2(obs[:, 2], obs[:, 1])
        action = (kx * obs[:, 0] + kt * theta + kv * obs[:, 3] + kw * obs[:, 4]).clamp(-1, 1)[:, None]
        obs, reward, *_ = env.step(action)
        rewards.append(reward)
    rewards = torch.stack(rewards)
    assert float(rewards.min()) > 0.95 and float(rewards.mean()) > 0.98
    # The same controller with the sign flipped drops the pole: the reward does see it.
    env = envs.make("cartpole-balance", 16, device="cpu", seed=0)
    obs = env.reset()
    for _ in range(200):
        theta = torch.atan2(obs[:, 2], obs[:, 1])
        obs, reward, *_ = env.step(-(kt * theta + kw * obs[:, 4]).clamp(-1, 1)[:, None])
    assert float(reward.mean()) < 0.5
    # Swing-up with zero action: the pole hangs down, the reward stays near 0.
    env = envs.make("cartpole-swingup", 16, device="cpu", seed=0)
    env.reset()
    total = torch.zeros(16)
    for _ in range(200):
        _, reward, *_ = env.step(torch.zeros(16, 1))
        total += reward
    assert float((total / 200).max()) < 0.01


def test_public_readouts():
    """The readout seam users and tests share: copies of the state, the controls a step applied even where
    the world reset right after (time limit 1), results identical with and without readouts, and a
    partial reset that checks its mask."""
    action = torch.tensor([[0.5], [-1.0], [2.0]])
    plain, read = (envs.make("cartpole-swingup", 3, device="cpu", seed=4, time_limit=2) for _ in range(2))
    for env in (plain, read):
        env.reset()
        env.step(torch.zeros(3, 1))
    qpos = read.qpos
    qpos.add_(1.0)  # a copy: the worlds do not move
    assert torch.equal(read.qpos, plain.qpos)
    expected = plain.step(action)
    got = read.step(action, readouts=True)
    for a, b in zip(expected[:4], got[:4]):
        assert torch.equal(a, b)
    assert set(got[4]) == set(expected[4]) | {"ctrl"}
    assert got[4]["done"].all() and torch.equal(read.ctrl, torch.zeros(3, 1))  # every world reset after the step
    low, high = read.ctrl_low, read.ctrl_high
    torch.testing.assert_close(got[4]["ctrl"], (action.clamp(-1, 1) + 1) / 2 * (high - low) + low, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"mask must be a \[num_envs\] = \[3\] bool tensor, got \(torch.int64, \[3\]\)"):
        read.reset_worlds(torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"got \(torch.bool, \[2\]\)"):
        read.reset_worlds(torch.tensor([True, False]))
