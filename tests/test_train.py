"""The training application on the cartpole set: it runs, learns a little, checkpoints, resumes exactly,
stops on SIGTERM and on a NaN loss, and a saved run evaluates. (Learning itself is a benchmark.)"""
import dataclasses
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from ezm_gpu import train
from ezm_gpu.checkpoint import latest_checkpoint, load_checkpoint
from ezm_gpu.config import SearchSettings, TrainConfig
from ezm_gpu.metrics import read_metrics
from ezm_gpu.plot import plot_run

SMALL = dict(tasks="cartpole", envs=4, steps=60, preset="cpu", device="cpu", start_transitions=20, batch_size=16,
             replay_capacity=1000, log_interval=2, eval_interval=10_000, checkpoint_interval=5, eval_steps=20,
             search=SearchSettings(num_simulations=4, num_root_actions=4, root_wide=2))


def _train_rows(run_dir):
    return [{k: v for k, v in row.items() if k.startswith("train/") or k == "step"}
            for row in read_metrics(run_dir / "metrics.csv") if row.get("train/total") is not None]


def test_bad_config_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", "envs=0", "tasks=cartpole", f"out={out}"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "invalid envs=0: an integer >= 1" in result.stderr
    assert not out.exists()
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", "tasks=[h1-fly]", f"out={out}"],
                            capture_output=True, text=True)
    assert "unknown task ids ['h1-fly']" in result.stderr and not out.exists()
    for override, message in (("preset=huge", "invalid preset='huge': one of cpu, hard, medium"),
                              ("model.hiden=3", "Could not override 'model.hiden'")):
        result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", override, f"out={out}"],
                                capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()


def test_smoke_run_learns_checkpoints_and_evaluates(tmp_path):
    run_dir = train.run(TrainConfig(out=str(tmp_path / "run"), **SMALL))
    rows = _train_rows(run_dir)
    assert len(rows) >= 10 and all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)
    totals = [r["train/total"] for r in rows]
    assert sum(totals[-3:]) / 3 < sum(totals[:3]) / 3  # the loss goes down
    last = latest_checkpoint(run_dir / "checkpoints")
    state = load_checkpoint(last)
    assert state["counters"]["iteration"] == 30 and state["learner"]["updates"] == state["counters"]["updates"]
    final = read_metrics(run_dir / "metrics.csv")[-1]
    assert {"eval/return/cartpole-balance", "eval/return/cartpole-swingup"} <= set(final)
    assert plot_run(run_dir).stat().st_size > 10_000
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.evaluate", str(run_dir), "--steps", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"cartpole-balance +[-0-9.]+ +800 ", result.stdout), result.stdout


def test_evaluate_averages_side_by_side_episodes_per_task(monkeypatch):
    """eval_episodes worlds per task, the score is the mean of each task's own block of worlds: compared
    with a plain rollout of the same worlds under a fixed action (balance and swingup score far apart)."""
    from ezm_gpu import envs

    episodes, steps, seed = 3, 30, 7
    fixed = lambda model, obs, task_ids, *args, **kwargs: type("Out", (), {"actions": torch.full(
        (obs.shape[0], 1), 0.5)})()
    monkeypatch.setattr(train, "act", fixed)
    tasks = ["cartpole-balance", "cartpole-swingup"]
    cfg = TrainConfig(**{**SMALL, "eval_steps": steps, "eval_episodes": episodes})
    scores = train.evaluate(None, tasks, cfg, torch.device("cpu"), seed)

    world = envs.make_set(tasks, len(tasks) * episodes, device="cpu", seed=seed, time_limit=steps,
                          ignore_termination=False)
    world.reset()
    returns = torch.zeros(world.num_envs)
    for _ in range(steps):
        returns += world.step(torch.full((world.num_envs, 1), 0.5))[1]
    for t, task in enumerate(tasks):
        block = returns[world.task_ids == t]
        assert block.numel() == episodes and len(set(block.tolist())) == episodes  # distinct episodes
        assert scores[task] == pytest.approx(block.mean().item(), rel=1e-6)
    assert abs(scores["cartpole-balance"] - scores["cartpole-swingup"]) > 1.0


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = train.run(TrainConfig(out=str(tmp_path / "whole"), **SMALL))
    periodic = train._periodic

    def interrupt_at_update_12(cfg, counters, *args):
        periodic(cfg, counters, *args)
        if counters["updates"] == 12:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler lets the iteration finish, then checkpoints

    monkeypatch.setattr(train, "_periodic", interrupt_at_update_12)
    parted = train.run(TrainConfig(out=str(tmp_path / "parted"), **SMALL))
    stopped = load_checkpoint(latest_checkpoint(parted / "checkpoints"))
    assert 12 <= stopped["counters"]["updates"] < 40 and stopped["counters"]["iteration"] < 30
    monkeypatch.setattr(train, "_periodic", periodic)
    train.run(dataclasses.replace(TrainConfig(**SMALL), resume=str(parted)))
    assert _train_rows(parted) == _train_rows(whole)  # same losses, update by update
    a = load_checkpoint(latest_checkpoint(whole / "checkpoints"))["learner"]["model"]
    b = load_checkpoint(latest_checkpoint(parted / "checkpoints"))["learner"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_without_replay_resume_with_an_empty_replay(tmp_path, monkeypatch):
    periodic = train._periodic

    def interrupt_at_update_12(cfg, counters, *args):
        periodic(cfg, counters, *args)
        if counters["updates"] == 12:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train, "_periodic", interrupt_at_update_12)
    cfg = TrainConfig(out=str(tmp_path / "lean"), checkpoint_replay=False, **SMALL)
    run_dir = train.run(cfg)
    stopped = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert "replay" not in stopped and {"learner", "envs", "rng", "counters"} <= set(stopped)
    monkeypatch.setattr(train, "_periodic", periodic)
    train.run(dataclasses.replace(cfg, resume=str(run_dir)))
    final = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert final["counters"]["iteration"] == 30 and final["counters"]["updates"] > stopped["counters"]["updates"]
    rows = _train_rows(run_dir)
    assert rows[-1]["step"] > 12 and all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    update = train.Learner.update

    def poisoned(self, replay, generator=None):
        terms = update(self, replay, generator)
        if self.updates >= 8:
            terms["loss"] = torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(train.Learner, "update", poisoned)
    with pytest.raises(train.TrainingDiverged, match="loss became nan at update 8; the last good checkpoint"):
        train.run(TrainConfig(out=str(tmp_path / "nan"), **SMALL))
    good = load_checkpoint(latest_checkpoint(tmp_path / "nan" / "checkpoints"))
    assert good["counters"]["updates"] == 5  # checkpoint_interval 5: the last one before the NaN
