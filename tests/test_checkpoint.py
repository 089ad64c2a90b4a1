"""Checkpoints: atomic writes, clear errors, RNG round trips, and a resumed learner that repeats the original."""
import dataclasses
import random

import numpy as np
import pytest
import torch

from ezm_gpu.checkpoint import (CheckpointError, CheckpointNotFoundError, capture_rng_state, checkpoint_path,
                                latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint)
from ezm_gpu.planning import SearchSettings
from ezm_gpu.learner import Learner, LearnerConfig
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.replay import _ROW_STORAGE, ReplayBuffer
from test_learner import ACT, OBS, TASKS, _filled_replay


def _state(value):
    return {"nested": {"weights": torch.full((3, 2), float(value)), "list": [torch.arange(4), {"x": value}]},
            "updates": value, "name": "run"}


def _assert_state(state, value):
    assert torch.equal(state["nested"]["weights"], torch.full((3, 2), float(value)))
    assert torch.equal(state["nested"]["list"][0], torch.arange(4)) and state["nested"]["list"][1] == {"x": value}
    assert state["updates"] == value and state["name"] == "run"


def test_nested_state_round_trip(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path / "run", 5), _state(5))
    assert path.name == "checkpoint_000000000005.pt"
    _assert_state(load_checkpoint(path, map_location="cpu"), 5)


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint bytes")  # some bytes reach the file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_state(load_checkpoint(path), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def test_interrupt_mid_write_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint.pt", _state(1))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_latest_checkpoint_orders_by_update_count_and_ignores_temporaries(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for updates in (900, 10_000, 50):
        save_checkpoint(checkpoint_path(tmp_path, updates), _state(updates))
    (tmp_path / ".checkpoint_000000099999.pt.abc.tmp").write_bytes(b"left by a killed run")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 10_000)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing")


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    good = save_checkpoint(checkpoint_path(tmp_path, 1), _state(1))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at .*checkpoint_000000000001.pt"):
        load_checkpoint(checkpoint_path(tmp_path, 2))
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_checkpoint(tmp_path / "nope.pt")

    truncated = checkpoint_path(tmp_path, 3)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*older checkpoint.*checkpoint_000000000001\.pt"):
        load_checkpoint(truncated)
    garbage = checkpoint_path(tmp_path, 4)
    garbage.write_bytes(b"\x00not a zip at all" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint written by"):
        load_checkpoint(foreign)


def test_rng_round_trip_reproduces_draws():
    g_cpu, g_other = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.rand(5, generator=g_cpu), random.random(), np.random.normal()  # state with a cached gaussian etc.

    def draws():
        return (random.random(), random.getrandbits(64), np.random.rand(3).tolist(), np.random.normal(),
                torch.rand(4).tolist(), torch.rand(4, generator=g_cpu).tolist(),
                torch.randn(2, generator=g_other).tolist())

    state = capture_rng_state([g_cpu, g_other])
    first = draws()
    assert draws() != first  # the generators moved on
    restore_rng_state(state, [g_cpu, g_other])
    assert draws() == first


def test_rng_state_survives_a_checkpoint_with_the_safe_loader(tmp_path):
    g = torch.Generator().manual_seed(5)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state([g])})
    expected = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=g).tolist())
    restore_rng_state(load_checkpoint(path, weights_only=True)["rng"], [g])
    assert (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=g).tolist()) == expected
    with pytest.raises(CheckpointError, match="same generators"):
        restore_rng_state(load_checkpoint(path)["rng"], [])


def _learner(seed):
    torch.manual_seed(seed)
    model = EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))
    config = LearnerConfig(total_updates=10, lr_decay_at=0.3, ema_interval=2)  # EMA steps at 2, 4; decay at 3
    return Learner(model, config, SearchSettings(num_simulations=4, num_top_actions=4))


def _snapshot(learner, replay):
    return ([p.detach().clone() for p in learner.model.parameters()],
            [b.clone() for b in learner.model.buffers()],
            [p.detach().clone() for p in learner.ema.copy.parameters()],
            learner.optimizer.param_groups[0]["lr"], learner.updates,
            {k: v.clone() for k, v in replay.state_dict()["tensors"].items()})


def _assert_identical(a, b):
    for x, y in zip(a[:3], b[:3]):
        assert len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y))
    assert a[3:5] == b[3:5]
    assert a[5].keys() == b[5].keys() and all(torch.equal(a[5][k], b[5][k]) for k in a[5])


def test_resumed_learner_and_replay_repeat_the_uninterrupted_run(tmp_path):
    replay, learner, g = _filled_replay(), _learner(0), torch.Generator().manual_seed(1)
    learner.update(replay, g)
    path = save_checkpoint(checkpoint_path(tmp_path, learner.updates),
                           {"learner": learner.state_dict(), "replay": replay.state_dict(),
                            "rng": capture_rng_state([g])})
    for _ in range(2):  # the uninterrupted run goes on, through an EMA step (2) and the lr decay (3)
        learner.update(replay, g)
    uninterrupted = _snapshot(learner, replay)

    # A fresh process: other initial weights, an empty buffer, a generator in another state.
    resumed, restored, g2 = _learner(123), ReplayBuffer(replay.config), torch.Generator().manual_seed(99)
    assert latest_checkpoint(tmp_path) == path
    state = load_checkpoint(path, map_location="cpu")
    resumed.load_state_dict(state["learner"])
    restored.load_state_dict(state["replay"])
    restore_rng_state(state["rng"], [g2])
    assert resumed.updates == 1
    for _ in range(2):
        resumed.update(restored, g2)
    _assert_identical(_snapshot(resumed, restored), uninterrupted)
    assert uninterrupted[3] == pytest.approx(1e-5)  # the run crossed the learning-rate decay after resuming


@pytest.mark.parametrize("steps", [40, 200])  # part filled; wrapped around (every slot written)
@pytest.mark.parametrize("form", ["state_dict", "checkpoint_state"])
def test_restored_replay_samples_identically(tmp_path, steps, form):
    replay = _filled_replay(steps)
    state = getattr(replay, form)()
    if form == "checkpoint_state":  # only the rows written so far are stored
        filled = replay.size().tolist()
        assert filled == state["filled"] and state["rows"]["obs"].shape[0] == sum(filled)
        assert (sum(filled) < 2 * 256) == (steps == 40)
    path = save_checkpoint(tmp_path / "replay.pt", {"replay": state})
    restored = ReplayBuffer(replay.config)
    restored.load_state_dict(load_checkpoint(path)["replay"])
    ours, theirs = replay.state_dict()["tensors"], restored.state_dict()["tensors"]
    for name in ours:  # every slot, empty ones included; not the per-row storage's last row (the write sink)
        kept = slice(0, -1) if name in _ROW_STORAGE else slice(None)
        assert torch.equal(ours[name][kept], theirs[name][kept]), name
    a, b = replay.sample(torch.Generator().manual_seed(4)), restored.sample(torch.Generator().manual_seed(4))
    for field in ("task_ids", "indices", "stamps", "age", "weights", "obs", "actions", "rewards", "obs_mask",
                  "step_mask", "terminal"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_replay_state_with_another_config_is_rejected():
    replay = _filled_replay()
    other = ReplayBuffer(dataclasses.replace(replay.config, capacity=128))
    before = other.state_dict()["tensors"]["count"].clone()
    with pytest.raises(ValueError, match="capacity: 256 vs 128"):
        other.load_state_dict(replay.state_dict())
    assert torch.equal(other.state_dict()["tensors"]["count"], before)
