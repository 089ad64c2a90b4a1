"""The training application on the cartpole set: it runs, learns a little, checkpoints, resumes exactly,
stops on SIGTERM and on a NaN loss, and a saved run evaluates. (Learning itself is a benchmark.)"""
import dataclasses
import gc
import os
import re
import signal
import subprocess
import sys
import weakref

import pytest
import torch

from ezm_gpu import checkpoint as checkpoint_module
from ezm_gpu import collect, config, curriculum
from ezm_gpu import evaluate as evaluate_cli
from ezm_gpu import train
from ezm_gpu.learner import Learner
from ezm_gpu.checkpoint import latest_checkpoint, load_checkpoint
from ezm_gpu.config import SearchSettings, TrainConfig
from ezm_gpu.metrics import read_metrics
from ezm_gpu.plot import plot_run

# 30 decisions of 2 worlds per task, the first 10 random; 55 updates over the other 20, then 11 final ones
SMALL = dict(tasks="cartpole", envs=4, steps=60, preset="cpu", device="cpu", start_transitions=20, batch_size=16,
             replay_capacity=1000, log_interval=2, eval_interval=10_000, checkpoint_interval=5, eval_steps=20,
             updates_per_step=0.92, final_updates=0.2, search=SearchSettings(num_simulations=4, num_root_actions=4,
                                                                             root_wide=2))


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


def test_smoke_run_learns_checkpoints_and_evaluates(tmp_path, monkeypatch):
    cfg = TrainConfig(out=str(tmp_path / "run"), **SMALL)
    assert train.plan_updates(cfg, per_task_worlds=2) == train.UpdatePlan(decisions=30, random_decisions=10,
                                                                          collection=55, final=11)
    run_dir = train.run(cfg)
    rows = _train_rows(run_dir)
    assert len(rows) >= 10 and all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)
    totals = [r["train/total"] for r in rows]
    assert sum(totals[-3:]) / 3 < sum(totals[:3]) / 3  # the loss goes down
    last = latest_checkpoint(run_dir / "checkpoints")
    state = load_checkpoint(last)
    assert state["counters"] == {"iteration": 30, "updates": 66}  # exactly the plan: 55 + 11 final updates
    assert state["learner"]["updates"] == 66 and rows[-1]["step"] == 66
    # The replay holds what the run can write, 2 worlds x (30 transitions + 2 episode ends) per task, not
    # replay_capacity=1000; checkpoints store the rows written (60 transitions and the staggered episode ends).
    filled = state["replay"]["filled"]
    assert state["replay"]["config"]["capacity"] == 64 and all(60 <= f <= 64 for f in filled)
    assert filled == state["replay"]["tensors"]["count"].tolist() and state["replay"]["rows"]["obs"].shape[0] == sum(filled)
    final = read_metrics(run_dir / "metrics.csv")[-1]
    assert {"eval/return/cartpole-balance", "eval/return/cartpole-swingup"} <= set(final)
    # The final evaluation (the only one here) reaches TensorBoard too, and the run wrote its plot.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/return/cartpole-balance")] == \
        pytest.approx([final["eval/return/cartpole-balance"]])
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_run(run_dir).stat().st_size > 10_000
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.evaluate", str(run_dir), "--steps", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"cartpole-balance +[-0-9.]+ +800 ", result.stdout), result.stdout
    assert "load on device" not in result.stdout + result.stderr  # Warp's module lines are silenced
    # evaluate maps the checkpoint on the host and copies only the EMA weights to the device
    loads = []
    monkeypatch.setattr(evaluate_cli, "load_checkpoint",
                        lambda path, **kw: loads.append(kw) or load_checkpoint(path, **kw))
    evaluated = []
    monkeypatch.setattr(evaluate_cli, "evaluate", lambda model, tasks, *args: evaluated.append(model.state_dict())
                        or {task: 0.0 for task in tasks})
    evaluate_cli.main([str(run_dir)])
    weights = evaluated[0]
    assert loads == [dict(map_location="cpu", mmap=True)]
    assert all(torch.equal(weights[k], state["learner"]["ema"]["copy"][k]) for k in weights)


def test_evaluate_averages_side_by_side_episodes_per_task(monkeypatch):
    """eval_episodes worlds per task, the score is the mean of each task's own block of worlds: compared
    with a plain rollout of the same worlds under a fixed action (balance and swingup score far apart)."""
    from ezm_gpu import envs

    episodes, steps, seed = 3, 30, 7
    fixed = lambda model, obs, task_ids, *args, **kwargs: type("Out", (), {"actions": torch.full(
        (obs.shape[0], 1), 0.5)})()
    monkeypatch.setattr(evaluate_cli, "act", fixed)
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


def _interrupt_at(monkeypatch, update):
    """SIGTERM once the trainer has made ``update`` updates (through its public ``after_update``)."""
    after_update = train.Trainer.after_update

    def interrupt(trainer, terms):
        after_update(trainer, terms)
        if trainer.updates == update:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler lets the update finish, then checkpoints

    monkeypatch.setattr(train.Trainer, "after_update", interrupt)
    return after_update


def _run_until_interrupted(cfg: TrainConfig):
    """``train.run`` of a run that a signal stops: it raises RunInterrupted naming the resume command."""
    with pytest.raises(train.RunInterrupted) as stopped:
        train.run(cfg)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert str(stopped.value) == (f"interrupted (SIGTERM) at update {stopped.value.updates}; resume with: "
                                  f"python -m ezm_gpu.train resume={stopped.value.run_dir}")
    return stopped.value.run_dir


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """Stopped while collecting (update 12, resumed in-process) and during the final updates after the
    last decision (update 60 of 55 + 11, resumed by the command line): both finish as the whole run did."""
    whole = train.run(TrainConfig(out=str(tmp_path / "whole"), **SMALL))
    periodic = _interrupt_at(monkeypatch, 12)
    parted = _run_until_interrupted(TrainConfig(out=str(tmp_path / "parted"), **SMALL))
    stopped = load_checkpoint(latest_checkpoint(parted / "checkpoints"))
    assert stopped["counters"]["updates"] == 12 and stopped["counters"]["iteration"] < 30
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    _interrupt_at(monkeypatch, 60)
    late = _run_until_interrupted(TrainConfig(out=str(tmp_path / "late"), **SMALL))
    assert load_checkpoint(latest_checkpoint(late / "checkpoints"))["counters"] == {"iteration": 30, "updates": 60}
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    train.run(dataclasses.replace(TrainConfig(**SMALL), resume=str(parted)))
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", f"resume={late}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for run_dir in (parted, late):
        assert _train_rows(run_dir) == _train_rows(whole)  # same losses, update by update
        a = load_checkpoint(latest_checkpoint(whole / "checkpoints"))
        b = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
        assert b["counters"] == a["counters"] == {"iteration": 30, "updates": 66}
        assert all(torch.equal(a["learner"]["model"][k], b["learner"]["model"][k]) for k in a["learner"]["model"])


# One task (not the default set), 4 worlds: 15 decisions, the first 5 random; 30 + 6 updates.
ONE_TASK = ["tasks=[cartpole-balance]", "envs=4", "preset=cpu", "search=small", "device=cpu", "steps=60",
            "start_transitions=20", "batch_size=8", "replay_capacity=1000", "log_interval=2", "eval_interval=100000",
            "checkpoint_interval=5", "eval_steps=10", "updates_per_step=0.5", "final_updates=0.2",
            "search.num_simulations=4", "search.num_root_actions=4", "search.root_wide=2"]


def test_resume_alone_rebuilds_a_non_default_run_from_its_directory(tmp_path, monkeypatch):
    """``resume=RUN_DIR`` and nothing else: tasks, worlds, preset and every key come from the run's
    config.yaml (not from the defaults), and the run continues where it stopped."""
    train.main(ONE_TASK + [f"out={tmp_path / 'whole'}"])
    periodic = _interrupt_at(monkeypatch, 12)
    parted = tmp_path / "parted"
    with pytest.raises(SystemExit) as stopped:
        train.main(ONE_TASK + [f"out={parted}"])
    assert stopped.value.code == 143  # interrupted: not the exit of a finished run
    stopped = load_checkpoint(latest_checkpoint(parted / "checkpoints"))["counters"]
    assert stopped["updates"] == 12 and stopped["iteration"] < 15
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    saved = (parted / "config.yaml").read_text()
    # The checkpoint is read to host memory and released once copied into the run's tensors: the first
    # update after the resume finds the loaded replay gone (on a GPU, no second replay for the whole run).
    loaded, released = [], []

    def load_on_host(path, **kw):
        state = load_checkpoint(path, **kw)
        loaded.append((kw, weakref.ref(state["replay"]["rows"]["obs"])))
        return state

    def check_released(trainer, terms):
        gc.collect()
        released.append(loaded[0][1]() is None)
        periodic(trainer, terms)

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", load_on_host)
    monkeypatch.setattr(train.Trainer, "after_update", check_released)
    used = []
    validate = config.validate
    monkeypatch.setattr(config, "validate", lambda cfg: used.append(cfg) or validate(cfg))
    train.main([f"resume={parted}"])
    assert [kw for kw, _ in loaded] == [dict(map_location="cpu", mmap=True)] and released and all(released)
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    assert used == [dataclasses.replace(train.load_run_config(parted), resume=str(parted))]
    assert (used[0].tasks, used[0].envs, used[0].preset) == (["cartpole-balance"], 4, "cpu")
    assert (parted / "config.yaml").read_text() == saved
    final = load_checkpoint(latest_checkpoint(parted / "checkpoints"))
    assert final["counters"] == {"iteration": 15, "updates": 36} and final["learner"]["updates"] == 36
    rows = _train_rows(parted)
    assert [r["step"] for r in rows] == list(range(2, 37, 2))  # appended after the stop, none twice
    assert rows == _train_rows(tmp_path / "whole")
    evals = [k for row in read_metrics(parted / "metrics.csv") for k in row if k.startswith("eval/") and row[k] is not None]
    assert evals == ["eval/return/cartpole-balance"]
    with pytest.raises(SystemExit, match=r"resume continues the run's own config \(its config.yaml\); only steps, "
                                         r"eval_interval, .* may change, but these keys were given: envs=8 \(the "
                                         r"run's: 4\), preset=medium \(the run's: cpu\)"):
        train.main([f"resume={parted}", "envs=8", "steps=100", "preset=medium"])
    # steps may change: the run is extended, and its config.yaml records the new value
    train.main([f"resume={parted}", "steps=80", "log_interval=4"])
    assert load_checkpoint(latest_checkpoint(parted / "checkpoints"))["counters"]["iteration"] == 20
    extended = train.load_run_config(parted)
    assert (extended.steps, extended.log_interval) == (80, 4) and extended.envs == 4
    with pytest.raises(SystemExit, match=r"invalid steps=40: the run has taken 80 env steps per task already"):
        train.main([f"resume={parted}", "steps=40"])


def test_checkpoints_without_replay_resume_with_an_empty_replay(tmp_path, monkeypatch):
    periodic = _interrupt_at(monkeypatch, 12)
    cfg = TrainConfig(out=str(tmp_path / "lean"), checkpoint_replay=False, **SMALL)
    run_dir = _run_until_interrupted(cfg)
    stopped = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert "replay" not in stopped and {"learner", "envs", "rng", "counters"} <= set(stopped)
    monkeypatch.setattr(train.Trainer, "after_update", periodic)
    train.run(dataclasses.replace(cfg, resume=str(run_dir)))
    final = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert final["counters"]["iteration"] == 30 and final["counters"]["updates"] > stopped["counters"]["updates"]
    rows = _train_rows(run_dir)
    assert rows[-1]["step"] > 12 and all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    update = Learner.update

    def poisoned(self, replay, generator=None):
        terms = update(self, replay, generator)
        if self.updates >= 8:
            terms["loss"] = torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(Learner, "update", poisoned)
    with pytest.raises(train.TrainingDiverged, match="loss became nan at update 8; the last good checkpoint"):
        train.run(TrainConfig(out=str(tmp_path / "nan"), **SMALL))
    good = load_checkpoint(latest_checkpoint(tmp_path / "nan" / "checkpoints"))
    assert good["counters"]["updates"] == 5  # checkpoint_interval 5: the last one before the NaN


def test_training_staggers_first_episodes_and_scores_only_full_ones(tmp_path, monkeypatch):
    """Training resets with staggered starts (credits in whole decisions), and a world's shortened first
    episode never counts as a return (neither in the logged means nor in the saturation curriculum)."""
    from ezm_gpu import envs

    resets, steps, pushed = [], [], []
    reset, step_repeated, push = envs.TaskSet.reset, collect.step_repeated, curriculum.push_recent_returns

    def recording_reset(self, *args, **kwargs):
        obs = reset(self, *args, **kwargs)
        resets.append((kwargs, torch.cat([env.start_elapsed for env in self.envs])))
        return obs

    def recording_step(world, actions, repeat):
        out = step_repeated(world, actions, repeat)
        if world.num_envs == 16:  # the training worlds (not the final evaluation's)
            steps.append(out[3]["done"].clone())
        return out

    def recording_push(recent, recent_count, task_ids, done, episode_return):
        pushed.append(done.clone())
        return push(recent, recent_count, task_ids, done, episode_return)

    monkeypatch.setattr(envs.TaskSet, "reset", recording_reset)
    monkeypatch.setattr(collect, "step_repeated", recording_step)
    monkeypatch.setattr(curriculum, "push_recent_returns", recording_push)
    cfg = TrainConfig(out=str(tmp_path / "run"), **{**SMALL, "envs": 16, "episode_length": 8, "action_repeat": 2,
                                                     "steps": 480, "updates_per_step": 0.05,
                                                     "final_updates": 0.0})  # 30 decisions, 24 updates
    train.run(cfg)
    kwargs, credits = resets[0]
    assert kwargs == {"stagger": True, "stagger_multiple": 2}
    assert (credits % 2 == 0).all() and len(set(credits.tolist())) > 1  # whole decisions, not one wave
    done, finished = torch.stack(steps), torch.stack(pushed)  # [decisions, W]
    first = done.int().argmax(0)  # each world's first episode end
    worlds = torch.arange(16)
    assert done[first, worlds].all()
    assert torch.equal(first, (8 - credits) // 2 - 1)  # after (time limit - credit) / repeat decisions
    assert not finished[first, worlds].any()  # the shortened first episode is no score
    later = done.clone()
    later[first, worlds] = False
    assert later.any() and torch.equal(finished, later)  # every later episode end counts

    plain = TrainConfig(out=str(tmp_path / "plain"), **{**SMALL, "stagger_resets": False})
    resets.clear()
    train.run(plain)
    assert resets[0][0] == {"stagger": False, "stagger_multiple": 1}
    assert not resets[0][1].any()


def test_nan_weights_stop_the_run_as_diverged(tmp_path, monkeypatch):
    """NaN weights reach acting (NaN actions into the envs), the search and the targets (two_hot of NaN):
    the run must end with TrainingDiverged, not an index error, and keep its last good checkpoint."""
    after_update = train.Trainer.after_update

    def poison_at_update_6(trainer, terms):
        after_update(trainer, terms)
        if trainer.updates == 6:
            with torch.no_grad():
                for model in (trainer.learner.model, trainer.learner.ema.copy):
                    for p in model.parameters():
                        p.fill_(float("nan"))

    monkeypatch.setattr(train.Trainer, "after_update", poison_at_update_6)
    with pytest.raises(train.TrainingDiverged, match=r"loss became nan at update 7"):
        train.run(TrainConfig(out=str(tmp_path / "nan"), **SMALL))
    assert load_checkpoint(latest_checkpoint(tmp_path / "nan" / "checkpoints"))["counters"]["updates"] == 5
