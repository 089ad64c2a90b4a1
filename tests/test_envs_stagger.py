"""Staggered episode starts: ``reset(stagger=True)`` spreads the first time limits of the worlds over
1..time_limit steps (no synchronised waves), reproducibly per seed, without changing the reset state,
the later episodes or any other random draw. CPU; cartpole (no assets) except one h1 task-set check.
"""
import pathlib

import pytest
import torch

from ezm_gpu import envs
from ezm_gpu.envs.env import RNG_LANES
from host_sync import forbid_host_sync

ASSETS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "humanoidbench"
W, T = 512, 50  # worlds, time limit

# Thresholds for a correct implementation. The draws are deterministic for a seed, so each check either
# always passes or always fails; these are the chances that a correct uniform draw over 1..50 fails
# for the seed used (the ≈uniform floor(k·T/2**24) mapping is off uniform by T/2**24 < 3e-6, negligible):
#  - every value 1..50 occurs: P(some bin of 50 is empty among 512 draws) <= 50·(49/50)**512 = 1.6e-3;
#  - chi-square over the 50 bins (49 dof; mean 49, sd 9.9): P(chi2 > 95) = 9e-5 (integrated numerically);
#  - mean: uniform on 1..50 has mean 25.5 and variance (50**2 - 1)/12 = 208.25, so the sample mean of 512
#    has sd sqrt(208.25/512) = 0.64; 4 sd = 2.55 (P ≈ 6e-5). Variance: the sample variance of 512 has
#    sd ≈ sqrt((m4 - s**4)/512) ≈ 8.2 (m4 = 78,125 for this uniform); 4 sd = 33.
# Without stagger all 512 worlds end at step 50: chi2 = 512·49 = 25,088, mean off by 24.5.
CHI2_MAX, MEAN_TOL, VAR_TOL = 95.0, 2.55, 33.0


def _run(env, steps, stagger=True, generator_seed=0):
    """Resets (with or without stagger), then ``steps`` steps of random actions. Returns the reset obs and
    per step: done [steps, W], episode_length, episode_return, reward, obs (all stacked)."""
    obs0 = env.reset(stagger=stagger)
    g = torch.Generator().manual_seed(generator_seed)
    rows = {"done": [], "length": [], "ret": [], "reward": [], "obs": [], "truncated": []}
    for _ in range(steps):
        action = torch.rand(env.num_envs, env.action_dim, generator=g) * 2 - 1
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated.any()  # cartpole never terminates: every done is the time limit
        for key, value in (("done", info["done"]), ("length", info["episode_length"]), ("ret", info["episode_return"]),
                           ("reward", reward), ("obs", obs),
                           ("truncated", truncated)):
            rows[key].append(value)
    return obs0, {k: torch.stack(v) for k, v in rows.items()}


def _first_done_step(done):
    """done [S, W] -> [W] 1-based step of each world's first done (0 where none)."""
    steps = torch.arange(1, done.shape[0] + 1)[:, None].expand_as(done)
    return torch.where(done, steps, done.shape[0] + 1).min(0).values % (done.shape[0] + 1)


def test_first_resets_are_uniform_over_the_time_limit_and_later_episodes_are_full():
    env = envs.make("cartpole-balance", W, device="cpu", seed=7, time_limit=T)
    obs0, run = _run(env, 2 * T)
    first = _first_done_step(run["done"])
    assert (first >= 1).all() and (first <= T).all()
    counts = torch.bincount(first, minlength=T + 1)[1:].double()
    assert (counts > 0).all(), counts.tolist()  # every step 1..T ends some world's first episode
    expected = W / T
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_MAX, chi2
    f = first.double()
    assert abs(float(f.mean()) - (T + 1) / 2) < MEAN_TOL, float(f.mean())
    assert abs(float(f.var()) - (T * T - 1) / 12) < VAR_TOL, float(f.var())
    # The draw is exactly the start_elapsed credit: the first episode runs time_limit - credit steps.
    worlds = torch.arange(W)
    lengths, returns, truncated = run["length"], run["ret"], run["truncated"]
    assert torch.equal(lengths[first - 1, worlds], first) and truncated[first - 1, worlds].all()
    # The reported episode is the steps actually taken: its return is the reward summed since the reset.
    cumulative = run["reward"].cumsum(0)
    torch.testing.assert_close(returns[first - 1, worlds], cumulative[first - 1, worlds])
    # Later episodes have the full time limit: the second done is exactly T steps after the first, with
    # length T and the return of those T steps; the credit is gone.
    done_after = run["done"].clone()
    done_after[first - 1, worlds] = False
    second = _first_done_step(done_after)
    assert torch.equal(second, first + T), (second - first).unique().tolist()
    assert (lengths[second - 1, worlds] == T).all()
    torch.testing.assert_close(returns[second - 1, worlds],
                               cumulative[second - 1, worlds] - cumulative[first - 1, worlds], rtol=1e-5, atol=1e-4)
    assert torch.equal(env.start_elapsed, torch.zeros(W, dtype=torch.int64))

    # Without stagger every world ends at exactly step T (the synchronised wave), and the same check fails.
    plain = envs.make("cartpole-balance", W, device="cpu", seed=7, time_limit=T)
    plain_obs0, plain_run = _run(plain, T, stagger=False)
    plain_first = _first_done_step(plain_run["done"])
    assert torch.equal(plain_first, torch.full((W,), T))
    plain_counts = torch.bincount(plain_first, minlength=T + 1)[1:].double()
    assert float(((plain_counts - expected) ** 2 / expected).sum()) > 100 * CHI2_MAX
    # Same reset state with or without stagger (only the credit differs), and the other random draws are
    # unchanged: the state each world resets to at its first done is the un-staggered env's second draw.
    assert torch.equal(obs0, plain_obs0)
    torch.testing.assert_close(run["obs"][first - 1, worlds], plain_run["obs"][T - 1], rtol=0, atol=0)


def test_stagger_draws_are_reproducible_per_seed():
    def credits(seed, time_limit=T, num_envs=W):
        env = envs.make("cartpole-swingup", num_envs, device="cpu", seed=seed, time_limit=time_limit)
        obs = env.reset(stagger=True)
        return env.start_elapsed.clone(), obs

    a, obs_a = credits(3)
    b, obs_b = credits(3)
    c, obs_c = credits(4)
    assert a.dtype == torch.int64 and int(a.min()) == 0 and int(a.max()) == T - 1
    assert torch.equal(a, b) and torch.equal(obs_a, obs_b)
    assert not torch.equal(a, c) and float((a == c).double().mean()) < 0.1  # ~1/50 agree by chance
    # A world's credit depends on (seed, world, reset count) only, not on the number of worlds.
    assert torch.equal(credits(3, num_envs=64)[0], a[:64])
    # Its own lanes: it is the RNG's uniform on RNG_LANES["stagger"], scaled to [0, time_limit).
    unit = envs.env.hashed_uniform(3, torch.arange(W), torch.zeros(W, dtype=torch.int64), 1, 0.0, 1.0,
                                   lane_offset=RNG_LANES["stagger"])[:, 0]
    assert torch.equal(a, (unit.double() * T).floor().long())
    assert len(set(RNG_LANES.values())) == len(RNG_LANES)
    # The same seeds give the same first resets through steps; another seed other ones.
    runs = [_first_done_step(_run(envs.make("cartpole-balance", 64, device="cpu", seed=seed, time_limit=T),
                                  T)[1]["done"]) for seed in (11, 11, 12)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # A second staggered reset draws anew (the reset counter moved on), reproducibly.
    env = envs.make("cartpole-balance", W, device="cpu", seed=3, time_limit=T)
    env.reset(stagger=True)
    first = env.start_elapsed.clone()
    env.reset(stagger=True)
    assert not torch.equal(env.start_elapsed, first)
    env.reset()  # a plain reset clears the credit
    assert torch.equal(env.start_elapsed, torch.zeros(W, dtype=torch.int64))


def test_task_set_staggers_each_task_from_its_own_seed():
    tasks = ["cartpole-balance", "cartpole-swingup"]
    a = envs.make_set(tasks, 2 * W, device="cpu", seed=5, time_limit=T)
    obs = a.reset(stagger=True)
    b = envs.make_set(tasks, 2 * W, device="cpu", seed=5, time_limit=T)
    plain_obs = b.reset()
    assert torch.equal(obs, plain_obs)
    for i, (task, env) in enumerate(zip(tasks, a.envs)):
        lone = envs.make(task, W, device="cpu", seed=5 * 1000 + i, time_limit=T)
        lone.reset(stagger=True)
        assert torch.equal(env.start_elapsed, lone.start_elapsed)
    assert not torch.equal(a.envs[0].start_elapsed, a.envs[1].start_elapsed)
    again = envs.make_set(tasks, 2 * W, device="cpu", seed=5, time_limit=T)
    again.reset(stagger=True)
    assert all(torch.equal(x.start_elapsed, y.start_elapsed) for x, y in zip(a.envs, again.envs))
    c = envs.make_set(tasks, 2 * W, device="cpu", seed=6, time_limit=T)
    c.reset(stagger=True)
    assert not any(torch.equal(x.start_elapsed, y.start_elapsed) for x, y in zip(a.envs, c.envs))
    # A longer time limit set during the first episode still counts the credit: worlds not yet done end
    # their first episode at the new limit minus the credit; later episodes have the new limit.
    credit = torch.cat([env.start_elapsed for env in a.envs])
    action, early = torch.zeros(2 * W, 1), 5
    done = [a.step(action)[4]["done"] for _ in range(early)]
    a.set_time_limit(2 * T)
    done += [a.step(action)[4]["done"] for _ in range(4 * T)]
    done = torch.stack(done)
    first = _first_done_step(done)
    ended_early = T - credit <= early  # credits 45..49 ended at the old limit before the change
    assert ended_early.any() and not ended_early.all()
    assert torch.equal(first, torch.where(ended_early, T - credit, 2 * T - credit))
    done[first - 1, torch.arange(2 * W)] = False
    assert torch.equal(_first_done_step(done), first + 2 * T)


def test_state_dict_round_trip_keeps_the_credit():
    a = envs.make("cartpole-balance", 64, device="cpu", seed=9, time_limit=T)
    a.reset(stagger=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(7):
        a.step(torch.rand(64, 1, generator=g) * 2 - 1)
    saved = a.state_dict()
    assert torch.equal(saved["start_elapsed"], a.start_elapsed) and saved["start_elapsed"].any()
    actions = [torch.rand(64, 1, generator=g) * 2 - 1 for _ in range(T)]
    expected = [a.step(x) for x in actions]
    b = envs.make("cartpole-balance", 64, device="cpu", seed=9, time_limit=T)
    b.reset()
    b.load_state_dict(saved)
    for x, (obs, reward, terminated, truncated, info) in zip(actions, expected):
        obs_b, reward_b, _, truncated_b, info_b = b.step(x)
        assert torch.equal(obs_b, obs) and torch.equal(truncated_b, truncated)
        assert torch.equal(info_b["episode_length"], info["episode_length"])
    # A state saved before start_elapsed existed loads as "no credit".
    old = {k: v for k, v in saved.items() if k != "start_elapsed"}
    b.load_state_dict(old)
    assert torch.equal(b.start_elapsed, torch.zeros(64, dtype=torch.int64))


def test_staggered_reset_does_no_host_sync(monkeypatch):
    env = envs.make("cartpole-balance", 8, device="cpu", time_limit=T)
    env.reset(stagger=True)  # warm up
    forbid_host_sync(monkeypatch, "env.reset(stagger=True)")
    env.reset(stagger=True)
    env.step(torch.zeros(8, 1), validate=False)
    monkeypatch.undo()
    assert int(env.start_elapsed.max()) < T


@pytest.mark.skipif(not ASSETS.is_dir(), reason="../shared/humanoidbench is not present")
def test_h1_task_set_stagger():
    tasks = envs.make_set(["h1-walk", "cartpole-balance"], 16, device="cpu", seed=1, time_limit=3, root=ASSETS)
    fresh = [env.state_dict() for env in tasks.envs]  # reset counters 0: rewinding to it repeats the draws
    obs = tasks.reset(stagger=True)
    credit = torch.cat([env.start_elapsed for env in tasks.envs])
    assert ((credit >= 0) & (credit < 3)).all() and len(credit[:8].unique()) == 3
    # HumanoidBench's reset state, unchanged: the same draw as a plain reset at the same reset count.
    for env, state in zip(tasks.envs, fresh):
        env.load_state_dict(state)
    assert torch.equal(tasks.reset(), obs) and not credit.eq(0).all()
    assert torch.equal(torch.cat([env.start_elapsed for env in tasks.envs]), torch.zeros(16, dtype=torch.int64))
    for env, state in zip(tasks.envs, fresh):
        env.load_state_dict(state)
    tasks.reset(stagger=True)
    assert torch.equal(torch.cat([env.start_elapsed for env in tasks.envs]), credit)
    # One step: exactly the worlds credited time_limit - 1 = 2 steps are truncated, after a 1-step episode.
    _, _, terminated, truncated, info = tasks.step(torch.zeros(16, 19), validate=False)
    assert not terminated.any() and not info["diverged"].any()
    assert torch.equal(truncated, credit == 2) and truncated.any()
    assert (info["episode_length"][info["done"]] == 1).all()


def test_stagger_multiple_keeps_episode_ends_on_decision_boundaries():
    """An agent with action repeat 2 asks for even credits: every first episode then lasts an even number of
    steps (it ends on a decision boundary when the time limit is even), uniformly over the 25 choices."""
    env = envs.make("cartpole-balance", W, device="cpu", seed=5, time_limit=T)
    env.reset(stagger=True, stagger_multiple=2)
    credit = env.start_elapsed
    assert (credit % 2 == 0).all() and int(credit.min()) == 0 and int(credit.max()) == T - 2
    counts = torch.bincount(credit // 2, minlength=T // 2).double()
    assert counts.shape == (T // 2,) and (counts > 0).all()
    # chi-square over 25 bins (24 dof): P(chi2 > 60) ≈ 6e-5 for a correct uniform draw
    assert float(((counts - W / 25) ** 2 / (W / 25)).sum()) < 60.0
    # The same uniform as multiple 1, on half as many choices: floor(u * 25) * 2.
    unit = envs.env.hashed_uniform(5, torch.arange(W), torch.zeros(W, dtype=torch.int64), 1, 0.0, 1.0,
                                   lane_offset=RNG_LANES["stagger"])[:, 0]
    assert torch.equal(credit, (unit.double() * (T // 2)).floor().long() * 2)
    with pytest.raises(ValueError, match="stagger_multiple must be an integer >= 1"):
        env.reset(stagger=True, stagger_multiple=0)
