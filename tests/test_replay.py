"""Per-task prioritised replay (ezm_gpu.replay): slices, PER statistics, windows, wrap-around, no host sync."""
import dataclasses
import math
import random

import pytest
import torch

from ezm_gpu.replay import ReplayBatch, ReplayBuffer, ReplayConfig

# Test observations encode where they come from: [world, episode, t, is_final_observation, task].
OBS_DIM, ACTION_DIM = 5, 2


def _config(**overrides) -> ReplayConfig:
    base = dict(num_tasks=2, capacity=64, obs_dim=OBS_DIM, action_dim=ACTION_DIM, num_worlds=6, batch_size=8,
                unroll_steps=3, td_steps=2)
    base.update(overrides)
    return ReplayConfig(**base)


class Recorder:
    """Drives a ReplayBuffer with synthetic episodes and keeps the ground truth per world."""

    def __init__(self, buffer: ReplayBuffer, world_tasks, seed=0, mean_length=6, terminate_prob=0.0,
                 shuffle=True):
        self.buffer = buffer
        self.world_tasks = list(world_tasks)
        self.rng = random.Random(seed)
        self.mean_length = mean_length
        self.terminate_prob = terminate_prob
        self.shuffle = shuffle
        W = len(self.world_tasks)
        self.episode = [0] * W
        self.t = [0] * W
        # episodes[w][e] = dict(steps=[(obs, action, reward)], final=obs or None, terminated=bool)
        self.episodes = [[dict(steps=[], final=None, terminated=False)] for _ in range(W)]

    def obs(self, w, final=False):
        return [float(w), float(self.episode[w]), float(self.t[w] + final), float(final), float(self.world_tasks[w])]

    def step(self, worlds=None):
        worlds = list(range(len(self.world_tasks))) if worlds is None else list(worlds)
        if self.shuffle:
            self.rng.shuffle(worlds)  # worlds of a task interleave in a different order each step
        rows = []
        for w in worlds:
            obs = self.obs(w)
            action = [self.rng.uniform(-1, 1) for _ in range(ACTION_DIM)]
            reward = self.rng.uniform(0, 10)
            done = self.rng.random() < 1.0 / self.mean_length
            terminated = done and self.rng.random() < self.terminate_prob
            final = self.obs(w, final=True)
            ep = self.episodes[w][-1]
            ep["steps"].append((obs, action, reward))
            rows.append((w, obs, action, reward, done, terminated, final))
            if done:
                ep["final"], ep["terminated"] = final, terminated
                self.episodes[w].append(dict(steps=[], final=None, terminated=False))
                self.episode[w] += 1
                self.t[w] = 0
            else:
                self.t[w] += 1
        self.buffer.add(
            torch.tensor([self.world_tasks[r[0]] for r in rows]),
            torch.tensor([r[1] for r in rows]),
            torch.tensor([r[2] for r in rows]),
            torch.tensor([r[3] for r in rows]),
            torch.tensor([r[4] for r in rows]),
            torch.tensor([r[6] for r in rows]),
            terminated=torch.tensor([r[5] for r in rows]),
            world_ids=torch.tensor([r[0] for r in rows]))

    def expected_window(self, start_obs, L):
        """Ground truth of a window starting at the transition whose observation is start_obs."""
        w, e, t, final = int(start_obs[0]), int(start_obs[1]), int(start_obs[2]), start_obs[3]
        assert final == 0.0, "a final observation was sampled as a start"
        ep = self.episodes[w][e]
        steps = ep["steps"]
        assert t < len(steps)
        obs, obs_mask, terminal = [steps[t][0]], [True], [False]
        actions, rewards, step_mask = [], [], []
        alive = True
        for j in range(L):
            i = t + j
            step = alive and i < len(steps)
            step_mask.append(step)
            actions.append(steps[i][1] if step else [0.0] * ACTION_DIM)
            rewards.append(steps[i][2] if step else 0.0)
            if step and i + 1 < len(steps):
                nxt, term = steps[i + 1][0], False
            elif step and ep["final"] is not None:
                nxt, term = ep["final"], ep["terminated"]
            else:
                nxt, term, step = obs[-1], False, False  # padding repeats the last valid observation
            alive = step
            obs.append(nxt)
            obs_mask.append(alive)
            terminal.append(alive and term)
        return dict(obs=obs, obs_mask=obs_mask, actions=actions, rewards=rewards, step_mask=step_mask,
                    terminal=terminal)


def _check_batch_against_truth(rec: Recorder, batch: ReplayBatch, config: ReplayConfig):
    L = config.unroll_steps + config.td_steps
    assert batch.obs.shape == (config.batch_size, L + 1, config.obs_dim)
    assert batch.actions.shape == (config.batch_size, L, config.action_dim)
    assert batch.rewards.shape == batch.step_mask.shape == (config.batch_size, L)
    assert batch.obs_mask.shape == batch.terminal.shape == (config.batch_size, L + 1)
    checked = 0
    for b in range(config.batch_size):
        if not batch.valid[b]:
            continue
        truth = rec.expected_window(batch.obs[b, 0].tolist(), L)
        assert batch.step_mask[b].tolist() == truth["step_mask"], b
        assert batch.obs_mask[b].tolist() == truth["obs_mask"], b
        assert batch.terminal[b].tolist() == truth["terminal"], b
        torch.testing.assert_close(batch.obs[b], torch.tensor(truth["obs"]), rtol=0, atol=0)
        torch.testing.assert_close(batch.actions[b], torch.tensor(truth["actions"]), rtol=0, atol=0)
        torch.testing.assert_close(batch.rewards[b], torch.tensor(truth["rewards"]), rtol=0, atol=0)
        # unmasked observations all belong to the start's world and episode
        world, episode = batch.obs[b, 0, 0], batch.obs[b, 0, 1]
        assert (batch.obs[b, batch.obs_mask[b], 0] == world).all()
        assert (batch.obs[b, batch.obs_mask[b], 1] == episode).all()
        checked += 1
    return checked


def _fill_single_world(buffer, task, n, world=0, end=True):
    """n consecutive transitions of one episode into `task`; obs[2] = step number. ``end``: the n-th step
    ends the episode (its final observation is row n, and every window is complete, so every transition can
    be sampled); False: the episode is still open (its newest K + n transitions cannot be sampled yet)."""
    for t in range(n):
        buffer.add(torch.tensor([task]), torch.tensor([[world, 0.0, t, 0.0, task]]), torch.zeros(1, ACTION_DIM),
                   torch.tensor([float(t)]), torch.tensor([end and t == n - 1]),
                   torch.tensor([[world, 0.0, t + 1, 1.0, task]]), world_ids=torch.tensor([world]))


# ------------------------------------------------------------------------------------------ slices


def test_every_batch_has_equal_per_task_slices_with_correct_task_ids():
    config = _config(num_tasks=3, batch_size=12, num_worlds=7)
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 0, 0, 0, 1, 2, 2], seed=1)  # uneven worlds per task
    for _ in range(30):
        rec.step()
    g = torch.Generator().manual_seed(0)
    expected = torch.arange(3).repeat_interleave(4)
    for _ in range(20):
        batch = buffer.sample(g)
        assert torch.equal(batch.task_ids, expected)
        assert batch.valid.all()
        assert torch.equal(batch.indices // config.capacity, expected)
        assert torch.equal(batch.obs[:, 0, 4].long(), expected)  # the data really is that task's
        assert torch.equal(batch.obs[batch.obs_mask][:, 4].long(), batch.task_ids[:, None].expand_as(
            batch.obs_mask)[batch.obs_mask])


def test_empty_task_gives_invalid_masked_samples():
    config = _config(num_tasks=2, batch_size=8)
    buffer = ReplayBuffer(config)
    _fill_single_world(buffer, task=1, n=5)
    batch = buffer.sample(torch.Generator().manual_seed(0))
    assert not batch.valid[:4].any() and batch.valid[4:].all()
    assert (batch.weights[:4] == 0).all() and not batch.obs_mask[:4].any() and not batch.step_mask[:4].any()
    assert (batch.stamps[:4] == -1).all()
    # updating the invalid samples' indices must not touch anything
    before = buffer.priorities()
    buffer.update_priorities(batch.indices, torch.full((8,), 7.0), batch.stamps)
    after = buffer.priorities()
    assert torch.equal(after[0], before[0])


# ------------------------------------------------------------------------------------------ PER statistics


def _chi_square(counts, probs):
    n = counts.sum()
    expected = probs * n
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_sampling_frequencies_match_per_formula(alpha):
    n_rows, capacity = 10, 16
    config = _config(num_tasks=2, capacity=capacity, batch_size=256, alpha=alpha)
    buffer = ReplayBuffer(config)
    for task in range(2):
        _fill_single_world(buffer, task, n_rows, world=task)
    priorities = torch.tensor([[0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20], [1, 1, 1, 1, 1, 1, 1, 1, 1, 40.0]])
    for task in range(2):
        buffer.update_priorities(task * capacity + torch.arange(n_rows), priorities[task])
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(2, n_rows, dtype=torch.float64)
    for _ in range(400):  # 51,200 draws per task: the rarest row expects ~500, so 4 sd is < 20%
        batch = buffer.sample(g)
        slots = batch.indices % capacity
        counts.index_put_((batch.task_ids, slots), torch.ones(len(slots), dtype=torch.float64), accumulate=True)
    for task in range(2):
        probs = priorities[task].double() ** alpha
        probs /= probs.sum()
        chi2 = _chi_square(counts[task], probs)
        assert chi2 < 27.88, (task, chi2, counts[task])  # chi-square, 9 dof, p = 0.001
        freq = counts[task] / counts[task].sum()
        assert ((freq - probs).abs() / probs).max() < 0.2, (freq, probs)


def test_sampling_frequency_test_detects_a_wrong_distribution():
    """The chi-square check above is sharp enough to reject uniform sampling of skewed priorities."""
    counts = torch.full((10,), 5120.0, dtype=torch.float64)
    probs = torch.tensor([0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20], dtype=torch.float64)
    assert _chi_square(counts, probs / probs.sum()) > 27.88


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_importance_weights_match_formula(beta):
    capacity = 8
    config = _config(num_tasks=2, capacity=capacity, batch_size=400, beta=beta)
    buffer = ReplayBuffer(config)
    priorities = torch.tensor([[1.0, 2.0, 4.0, 100.0, 0.5], [3.0, 3.0, 3.0, 3.0, 30.0]])
    for task in range(2):
        _fill_single_world(buffer, task, 5, world=task)
        buffer.update_priorities(task * capacity + torch.arange(5), priorities[task])
    batch = buffer.sample(torch.Generator().manual_seed(7))
    S = config.samples_per_task
    for task in range(2):
        p = priorities[task].double()
        P = p / p.sum()
        slots = (batch.indices[task * S:(task + 1) * S] % capacity)
        raw = (5 * P[slots]) ** -beta
        expected = (raw / raw.max()).clamp(0.1, 1.0)
        torch.testing.assert_close(batch.weights[task * S:(task + 1) * S].double(), expected, rtol=1e-6, atol=0)
    w0 = batch.weights[:S]
    if beta == 1.0:  # the 0.5 priority is 200x below the max: its weight is clipped down to 0.1
        assert (w0 == 0.1).any() and (w0 == 1.0).any()
    assert ((batch.weights >= 0.1) & (batch.weights <= 1.0)).all()


# ------------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_follow_one_world_and_never_cross_episode_ends(seed):
    config = _config(num_tasks=2, capacity=400, batch_size=64, num_worlds=6, unroll_steps=5, td_steps=5)
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 1, 0, 1, 0, 0], seed=seed, mean_length=7, terminate_prob=0.3)
    for _ in range(40):
        rec.step()
    g = torch.Generator().manual_seed(seed)
    checked, cut = 0, 0
    for _ in range(10):
        batch = buffer.sample(g)
        checked += _check_batch_against_truth(rec, batch, config)
        cut += int((~batch.step_mask[:, -1]).sum())
    assert checked == 640
    assert cut > 50  # plenty of windows did hit an episode end or the newest data
    assert sum(ep["terminated"] for eps in rec.episodes for ep in eps) > 0


def test_windows_with_worlds_missing_from_some_steps():
    """A world absent from an add keeps its trajectory: its next transition still links up."""
    config = _config(num_tasks=1, capacity=200, batch_size=32, num_worlds=4)
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 0, 0, 0], seed=3, mean_length=10)
    r = random.Random(0)
    for _ in range(40):
        rec.step(worlds=[w for w in range(4) if r.random() < 0.7] or [0])
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert _check_batch_against_truth(rec, buffer.sample(g), config) == 32


def test_windows_never_reach_past_the_newest_data():
    """An open episode's newest L = K + n transitions cannot start a sample (their windows would need
    observations that have not happened); each becomes sampleable, with its whole window, as the world's
    next steps arrive, and all of them at once when the episode ends."""
    config = _config(num_tasks=1, capacity=16, batch_size=64, unroll_steps=3, td_steps=2)  # L = 5
    buffer = ReplayBuffer(config)
    _fill_single_world(buffer, 0, 20, end=False)  # wrapped: stamps 4 … 19 stored, 15 … 19 incomplete
    buffer.update_priorities(torch.arange(16), torch.tensor([1.0] * 16))
    buffer.update_priorities(torch.tensor([19 % 16]), torch.tensor([1e6]))  # the newest would dominate
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(20):
        batch = buffer.sample(g)
        assert batch.valid.all() and batch.step_mask.all() and batch.obs_mask.all()  # complete windows
        assert torch.equal(batch.obs[:, :, 2], batch.obs[:, :1, 2] + torch.arange(6.0))  # o_t … o_{t+5}
        starts.update(batch.stamps.tolist())
    assert starts == set(range(4, 15))
    buffer.add(torch.tensor([0]), torch.tensor([[0, 0.0, 20, 0.0, 0]]), torch.zeros(1, ACTION_DIM),
               torch.tensor([20.0]), torch.tensor([False]), torch.zeros(1, OBS_DIM))
    starts = set().union(*(buffer.sample(g).stamps.tolist() for _ in range(20)))
    assert starts == set(range(5, 16))  # t = 15 now has o_20; t = 4 was overwritten by the new row
    buffer.add(torch.tensor([0]), torch.tensor([[0, 0.0, 21, 0.0, 0]]), torch.zeros(1, ACTION_DIM),
               torch.tensor([21.0]), torch.tensor([True]), torch.tensor([[0, 0.0, 22, 1.0, 0]]))
    batch = buffer.sample(g)  # the episode ended: 16 … 21 can start windows, which end at o_22 (final)
    assert batch.valid.all() and 19 in batch.stamps.tolist()
    newest = batch.stamps == 19
    assert batch.step_mask[newest, :3].all() and not batch.step_mask[newest, 3:].any()
    assert batch.obs_mask[newest, :4].all() and not batch.obs_mask[newest, 4:].any()
    assert (batch.obs[newest, :4, 2] == torch.tensor([19.0, 20, 21, 22])).all()
    assert (batch.obs[newest, 4:, 2] == 22).all()  # padding repeats the final observation


def test_frontier_targets_bootstrap_only_from_observations_that_happened():
    """V = 50 everywhere, reward 1 per step, one open episode per world: every sampled window's n-step
    target, at every unroll step, is Σ_{i<5} γ^i + γ^5 · 50, and every loss mask is set (reward, value,
    policy, consistency and path consistency all read inside the window). Before the fix, the window at
    the newest transition got z_t = 1 (a missing o_{t+5} bootstrapped as 0)."""
    from ezm_gpu.targets import n_step_values

    K, n, gamma = 5, 5, 0.99
    config = _config(num_tasks=1, capacity=512, batch_size=256, num_worlds=4, unroll_steps=K, td_steps=n)
    buffer = ReplayBuffer(config)
    for t in range(40):
        buffer.add(torch.zeros(4, dtype=torch.long), torch.tensor([[w, 0.0, t, 0.0, 0] for w in range(4)]),
                   torch.zeros(4, ACTION_DIM), torch.ones(4), torch.zeros(4, dtype=torch.bool), torch.zeros(4, OBS_DIM))
    newest = buffer.num_added()[0] - 1
    buffer.update_priorities(newest[None] % 512, torch.tensor([1e6]))  # as new rows enter at max priority
    batch = buffer.sample(torch.Generator().manual_seed(0))
    assert batch.valid.all() and batch.step_mask.all() and batch.obs_mask.all()
    assert (batch.age >= 4 * (K + n)).all()  # each world's newest K + n transitions are not sampled yet
    values = torch.full(batch.obs_mask.shape, 50.0)
    z = n_step_values(batch.rewards, values, batch.step_mask, batch.obs_mask, batch.terminal, gamma, n, K)
    expected = sum(gamma ** i for i in range(n)) + gamma ** n * 50.0
    torch.testing.assert_close(z, torch.full_like(z, expected))


# ------------------------------------------------------------------------------------------ ring wrap-around


def test_ring_wraparound_drops_oldest_and_keeps_windows_consistent():
    capacity = 24
    config = _config(num_tasks=2, capacity=capacity, batch_size=64, num_worlds=3, unroll_steps=3, td_steps=2)
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 0, 1], seed=5, mean_length=5)
    for _ in range(50):
        rec.step()
    count = buffer.num_added()
    assert (count > capacity).all()
    assert torch.equal(buffer.size(), torch.full((2,), capacity))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        batch = buffer.sample(g)
        assert batch.valid.all()
        assert torch.equal(batch.indices % capacity, batch.stamps % capacity)
        assert torch.equal(batch.indices // capacity, batch.task_ids)
        assert (batch.stamps >= count[batch.task_ids] - capacity).all()  # only live rows start a window
        assert torch.equal(batch.age, count[batch.task_ids] - 1 - batch.stamps)
        _check_batch_against_truth(rec, batch, config)
        seen.update(tuple(o) for o in batch.obs[:, 0, :3].tolist())
    # the oldest data is gone: the first step of every world was overwritten and is never sampled
    assert all(not (o[1] == 0 and o[2] == 0) for o in seen)

    # priorities follow the slots: a stale update (old stamp) is ignored, a current one lands
    batch = buffer.sample(g)
    idx, stamp = batch.indices[:1], batch.stamps[:1]
    before = buffer.priorities().flatten()[idx]
    buffer.update_priorities(idx, torch.tensor([123.0]), stamp - capacity)  # as if sampled before the overwrite
    assert torch.equal(buffer.priorities().flatten()[idx], before)
    buffer.update_priorities(idx, torch.tensor([123.0]), stamp)
    assert buffer.priorities().flatten()[idx].item() == 123.0


# ------------------------------------------------------------------------------------------ recency


def test_only_the_most_recent_rows_are_sampled():
    config = _config(num_tasks=2, capacity=50, batch_size=128, recency=10)
    buffer = ReplayBuffer(config)
    _fill_single_world(buffer, 0, 30, world=0, end=False)  # rows 25 … 29: windows not complete yet
    _fill_single_world(buffer, 1, 8, world=1, end=False)  # fewer rows than the recency window
    g = torch.Generator().manual_seed(0)
    starts = {0: set(), 1: set()}
    for _ in range(10):
        batch = buffer.sample(g)
        for task, t in zip(batch.task_ids.tolist(), batch.obs[:, 0, 2].long().tolist()):
            starts[task].add(t)
    assert starts[0] == set(range(20, 25))
    assert starts[1] == set(range(3))


# ------------------------------------------------------------------------------------------ priorities


def test_repeated_indices_store_their_largest_priority():
    """Sampling with replacement repeats rows in one update; the stored value is defined (the largest), not
    whichever write lands last (unspecified on CUDA; on CPU, the last, which this test rules out)."""
    capacity = 32
    buffer = ReplayBuffer(_config(num_tasks=2, capacity=capacity))
    _fill_single_world(buffer, 0, 4, world=0)
    _fill_single_world(buffer, 1, 4, world=1)
    rows = torch.tensor([1, 1, 1, capacity + 2, 0, capacity + 2, 1])
    given = torch.tensor([5.0, 9.0, 1.0, 0.5, 2.0, 0.25, 3.0])
    buffer.update_priorities(rows, given)
    pr = buffer.priorities()
    assert pr[0, 1].item() == 9.0 and pr[1, 2].item() == 0.5 and pr[0, 0].item() == 2.0
    assert torch.equal(pr[0, 2:4], torch.ones(2)) and torch.equal(pr[1, :2], torch.ones(2))  # others untouched
    shuffled = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    again = ReplayBuffer(_config(num_tasks=2, capacity=capacity))
    _fill_single_world(again, 0, 4, world=0)
    _fill_single_world(again, 1, 4, world=1)
    again.update_priorities(rows[shuffled], given[shuffled])
    assert torch.equal(again.priorities(), pr)  # independent of the order of the duplicates


def test_new_data_enters_at_task_max_priority_and_updates_change_sampling():
    capacity = 32
    config = _config(num_tasks=2, capacity=capacity, batch_size=256)
    buffer = ReplayBuffer(config)
    _fill_single_world(buffer, 0, 4, world=0)
    _fill_single_world(buffer, 1, 4, world=1)
    pr = buffer.priorities()
    assert torch.equal(pr[:, :4], torch.ones(2, 4))  # initial_priority while empty
    buffer.update_priorities(torch.tensor([0, 1, capacity + 2]), torch.tensor([5.0, 0.25, 3.0]))
    buffer.add(torch.tensor([0, 1]), torch.zeros(2, OBS_DIM), torch.zeros(2, ACTION_DIM), torch.zeros(2),
               torch.tensor([False, True]), torch.zeros(2, OBS_DIM), world_ids=torch.tensor([2, 3]))
    pr = buffer.priorities()  # slot 4 of each task holds the first episode's final observation
    assert pr[0, 5].item() == 5.0  # task 0's max
    assert pr[1, 5].item() == 3.0  # task 1's max
    assert pr[:, 4].eq(0).all() and pr[1, 6].item() == 0.0  # final observation rows can never be sampled

    g = torch.Generator().manual_seed(0)
    before = buffer.sample(g)
    S = config.samples_per_task
    hot = capacity + 3  # task 1, slot 3
    share_before = (before.indices[S:] == hot).double().mean().item()
    buffer.update_priorities(torch.tensor([hot]), torch.tensor([1000.0]))
    after = buffer.sample(g)
    share_after = (after.indices[S:] == hot).double().mean().item()
    assert share_before < 0.3 and share_after > 0.9
    assert (after.weights[S:][after.indices[S:] != hot] == 1.0).all()  # rare samples weigh the most
    assert (after.indices[S:] != capacity + 6).all()  # the final observation row never starts a window
    assert (after.indices[:S] // capacity == 0).all()  # task 0 untouched by task 1's update


def test_sampling_is_reproducible_with_a_generator():
    config = _config()
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 1, 0, 1], seed=0)
    for _ in range(20):
        rec.step()
    a = buffer.sample(torch.Generator().manual_seed(42))
    b = buffer.sample(torch.Generator().manual_seed(42))
    for field in dataclasses.fields(ReplayBatch):
        assert torch.equal(getattr(a, field.name), getattr(b, field.name)), field.name


# ------------------------------------------------------------------------------------------ host sync


def test_sample_and_update_do_no_host_sync(monkeypatch):
    config = _config(num_tasks=3, batch_size=12, num_worlds=6)
    buffer = ReplayBuffer(config)
    rec = Recorder(buffer, world_tasks=[0, 1, 2, 0, 1, 2], seed=0)
    for _ in range(10):
        rec.step()
    g = torch.Generator().manual_seed(0)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the replay buffer")

    for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    batch = buffer.sample(g)
    buffer.update_priorities(batch.indices, batch.weights + 1.0, batch.stamps, validate=False)
    # the hot-loop add (validate=False) is sync-free as well
    buffer.add(torch.tensor([0, 1]), torch.zeros(2, OBS_DIM), torch.zeros(2, ACTION_DIM), torch.zeros(2),
               torch.tensor([False, True]), torch.zeros(2, OBS_DIM), world_ids=torch.tensor([0, 1]), validate=False)
    monkeypatch.undo()
    assert batch.valid.all()


def test_the_host_sync_guard_can_fire(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "item", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sync")))
    with pytest.raises(AssertionError, match="sync"):
        torch.ones(1).item()


# ------------------------------------------------------------------------------------------ memory


def test_memory_report():
    config = _config(num_tasks=3, capacity=100, obs_dim=7, action_dim=4, num_worlds=5, batch_size=6)
    buffer = ReplayBuffer(config)
    rows = 3 * 100 + 1
    per_row = 4 * 7 + 4 * 4 + 4 + 4 + 8 + 8 + 1 + 1 + 1  # obs, action, reward, priority, stamp, next, 3 flags
    window = config.unroll_steps + config.td_steps
    assert buffer.memory_bytes() == rows * per_row + 3 * 8 + 2 * 5 * 8 + 5 * window * 8
    line = buffer.memory_summary()
    assert "\n" not in line and "MiB" in line and "3 tasks" in line


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("overrides, match", [
    (dict(capacity=0), "capacity"),
    (dict(capacity=-3), "capacity"),
    (dict(capacity=2.5), "capacity"),
    (dict(capacity=True), "capacity"),
    (dict(num_tasks=3, batch_size=8), "multiple of num_tasks"),
    (dict(num_tasks=4, batch_size=2), "multiple of num_tasks"),
    (dict(unroll_steps=0), "unroll_steps"),
    (dict(recency=0), "recency"),
    (dict(alpha=-1.0), "alpha"),
    (dict(beta=math.nan), "beta"),
    (dict(min_weight=1.5), "min_weight"),
    (dict(initial_priority=0.0), "initial_priority"),
])
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        _config(**overrides)


def test_buffer_needs_a_config():
    with pytest.raises(TypeError, match="ReplayConfig"):
        ReplayBuffer(dict(num_tasks=1))


def _good_add(W=2):
    return dict(task_ids=torch.tensor([0, 1][:W]), obs=torch.zeros(W, OBS_DIM), action=torch.zeros(W, ACTION_DIM),
                reward=torch.zeros(W), done=torch.zeros(W, dtype=torch.bool), next_obs=torch.zeros(W, OBS_DIM))


@pytest.mark.parametrize("change, error, match", [
    (dict(obs=torch.zeros(2, OBS_DIM + 1)), ValueError, "obs must have shape"),
    (dict(action=torch.zeros(2, ACTION_DIM, 1)), ValueError, "action must have shape"),
    (dict(reward=torch.zeros(3)), ValueError, "reward must have shape"),
    (dict(next_obs=torch.zeros(1, OBS_DIM)), ValueError, "next_obs must have shape"),
    (dict(obs=torch.zeros(2, OBS_DIM, dtype=torch.int64)), TypeError, "obs must have a floating-point dtype"),
    (dict(done=torch.zeros(2)), TypeError, "done must have a bool dtype"),
    (dict(task_ids=torch.tensor([0.0, 1.0])), TypeError, "task_ids must have an integer"),
    (dict(reward=[0.0, 0.0]), TypeError, "reward must be a torch.Tensor"),
    (dict(task_ids=torch.tensor([0, 2])), ValueError, r"task_ids must lie in \[0, 2\)"),
    (dict(task_ids=torch.tensor([-1, 0])), ValueError, "task_ids must lie in"),
    (dict(world_ids=torch.tensor([1, 1])), ValueError, "world_ids must be distinct"),
    (dict(world_ids=torch.tensor([0, 9])), ValueError, "world_ids must lie in"),
    (dict(terminated=torch.tensor([True, False])), ValueError, "terminated must imply done"),
    (dict(reward=torch.tensor([0.0, math.inf])), ValueError, "reward holds non-finite"),
    (dict(task_ids=torch.zeros((2, 1), dtype=torch.int64)), ValueError, "task_ids must be a non-empty 1-D"),
])
def test_bad_add_raises(change, error, match):
    buffer = ReplayBuffer(_config())
    with pytest.raises(error, match=match):
        buffer.add(**{**_good_add(), **change})
    # nothing was written by the rejected call
    assert torch.equal(buffer.num_added(), torch.zeros(2, dtype=torch.int64))


def test_add_rejects_more_worlds_than_configured_and_overfull_steps():
    buffer = ReplayBuffer(_config(num_worlds=1))
    with pytest.raises(ValueError, match="num_worlds"):
        buffer.add(**_good_add())
    small = ReplayBuffer(_config(capacity=3, num_worlds=4))
    args = dict(task_ids=torch.zeros(2, dtype=torch.int64), obs=torch.zeros(2, OBS_DIM),
                action=torch.zeros(2, ACTION_DIM), reward=torch.zeros(2), done=torch.ones(2, dtype=torch.bool),
                next_obs=torch.zeros(2, OBS_DIM))
    with pytest.raises(ValueError, match="more than capacity"):  # 2 transitions + 2 final observations > 3
        small.add(**args)


def test_bad_priority_update_raises():
    buffer = ReplayBuffer(_config(capacity=4))
    _fill_single_world(buffer, 0, 2)
    with pytest.raises(ValueError, match="indices must lie"):
        buffer.update_priorities(torch.tensor([8]), torch.tensor([1.0]), validate=True)
    with pytest.raises(ValueError, match="finite and >= 0"):
        buffer.update_priorities(torch.tensor([0]), torch.tensor([-1.0]), validate=True)
    with pytest.raises(ValueError, match="priorities must have shape"):
        buffer.update_priorities(torch.tensor([0, 1]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="indices must have an integer"):
        buffer.update_priorities(torch.tensor([0.0]), torch.tensor([1.0]))
    # without validation an out-of-range index is dropped, never written elsewhere
    before = buffer.priorities()
    buffer.update_priorities(torch.tensor([8, -1]), torch.tensor([9.0, 9.0]))
    assert torch.equal(buffer.priorities(), before)


def test_world_moving_to_another_task_starts_a_new_trajectory():
    config = _config(num_tasks=2, capacity=16, batch_size=64, num_worlds=2, unroll_steps=2, td_steps=1)
    buffer = ReplayBuffer(config)

    def add(world, task, t):
        buffer.add(torch.tensor([task]), torch.tensor([[world, 0.0, t, 0.0, task]]), torch.zeros(1, ACTION_DIM),
                   torch.zeros(1), torch.tensor([False]), torch.zeros(1, OBS_DIM), world_ids=torch.tensor([world]))

    for t in range(4):  # world 0 in task 0 and world 1 in task 1 both write stamps 0 … 3 of their task
        add(0, 0, t)
        add(1, 1, t)
    for t in range(4, 9):  # world 0 moves to task 1 without a done; world 1 pauses
        add(0, 1, t)
    batch = buffer.sample(torch.Generator().manual_seed(0))
    obs_mask = batch.obs_mask
    assert batch.valid.all() and obs_mask.all()  # only complete windows
    assert (batch.obs[:, :, 4].long() == batch.task_ids[:, None]).all()  # never across tasks
    assert (batch.obs[:, :, 0] == batch.obs[:, :1, 0]).all()  # never across worlds
    starts = {(int(w), int(t)) for w, t in batch.obs[:, 0, :3:2].tolist()}
    # task 0: world 0's t = 0 has its window o_0 … o_3; t = 1 … 3 never will (the move cut the episode).
    # task 1: world 1's t = 0 (o_0 … o_3 stored); world 0's t = 4, 5 (o_8 is the newest).
    assert starts == {(0, 0), (1, 0), (0, 4), (0, 5)}


def test_storage_bytes_is_what_the_buffer_allocates():
    """The memory table (benchmarks/memory.py) sizes the 1M-row replays from the layout, without allocating."""
    from ezm_gpu.replay import storage_bytes

    for config in (_config(), _config(num_tasks=3, capacity=100, obs_dim=7, action_dim=3, num_worlds=5, td_steps=4,
                                              batch_size=9)):
        buffer = ReplayBuffer(config)
        allocated = sum(t.untyped_storage().nbytes() for t in buffer.state_dict()["tensors"].values())
        assert storage_bytes(config) == buffer.memory_bytes() == allocated
    big = ReplayConfig(num_tasks=9, capacity=1_000_000, obs_dim=151, action_dim=19, num_worlds=4096, batch_size=513)
    per_row = 4 * (151 + 19 + 2) + 8 * 2 + 3  # obs, action, reward, priority; stamp, next; three flags
    assert storage_bytes(big) == per_row * (9_000_001) + 8 * 9 + 8 * 4096 * (2 + big.window)
