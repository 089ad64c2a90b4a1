"""Nothing lost, nothing silent: run directories, checkpoint rotation and integrity, interrupted writes,
metrics after a kill, signals and exit codes, and one-line errors from the commands."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from ezm_gpu import train
from ezm_gpu.checkpoint import (CheckpointError, checkpoint_path, latest_checkpoint, load_checkpoint,
                                rotate_checkpoints, save_checkpoint, sweep_temporaries)
from ezm_gpu.metrics import MetricsLogger, read_metrics

# One task, 4 worlds: quick runs of the command itself (15 decisions, 30 + 6 updates).
ONE_TASK = ["tasks=[cartpole-balance]", "envs=4", "preset=cpu", "search=small", "device=cpu", "steps=60",
            "start_transitions=20", "batch_size=8", "replay_capacity=1000", "log_interval=2", "eval_interval=100000",
            "checkpoint_interval=5", "eval_steps=10", "updates_per_step=0.5", "final_updates=0.2",
            "search.num_simulations=4", "search.num_root_actions=4", "search.root_wide=2"]


# ---------------------------------------------------------------------------- run directories


def test_out_holding_a_run_is_refused_before_any_work(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("envs: 4\n")
    monkeypatch.setattr(train.envs, "make_set", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit, match=rf"invalid out='{run_dir}': {run_dir} is not empty \(it holds config.yaml\); "
                                         rf"continue that run with `python -m ezm_gpu.train resume={run_dir}`, or "
                                         "choose another out="):
        train.main(ONE_TASK + [f"out={run_dir}"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"invalid out='.*file': .*file is a file; give a directory"):
        train.main(ONE_TASK + [f"out={tmp_path / 'file'}"])
    with pytest.raises(SystemExit, match=r"invalid out='/proc/ezm_run': cannot write a run directory there"):
        train.main(ONE_TASK + ["out=/proc/ezm_run"])
    with pytest.raises(SystemExit, match=r"nowhere/config.yaml does not exist: pass a run directory written by"):
        train.main([f"resume={tmp_path / 'nowhere'}"])


def test_rotation_keeps_the_newest_and_never_deletes_the_one_just_written(tmp_path):
    for updates in (10, 20, 30, 900):  # 900: a checkpoint with a higher count than the one written next
        save_checkpoint(checkpoint_path(tmp_path, updates), {"u": updates})
    newest = save_checkpoint(checkpoint_path(tmp_path, 40), {"u": 40})
    deleted = rotate_checkpoints(tmp_path, newest, keep=3)
    assert [p.name for p in deleted] == ["checkpoint_000000000010.pt"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [
        "checkpoint_000000000020.pt", "checkpoint_000000000030.pt", "checkpoint_000000000040.pt",
        "checkpoint_000000000900.pt"]


def test_bytes_changed_inside_a_checkpoint_are_detected_and_the_previous_one_offered(tmp_path):
    save_checkpoint(checkpoint_path(tmp_path, 5), {"w": torch.arange(50_000, dtype=torch.float32)})
    path = save_checkpoint(checkpoint_path(tmp_path, 10), {"w": torch.arange(50_000, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the tensor's bytes: the zip structure stays valid
    data[middle:middle + 8] = bytes(8 - i for i in range(8))
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"fails its CRC-32 check.*resume from an older checkpoint; other "
                                              r"checkpoints in .*: checkpoint_000000000005.pt"):
        load_checkpoint(path)
    assert torch.equal(load_checkpoint(checkpoint_path(tmp_path, 5))["w"], torch.arange(50_000, dtype=torch.float32))


def test_temporaries_of_killed_writes_are_swept(tmp_path):
    stale = tmp_path / ".checkpoint_000000000005.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.tmp"
    other.write_text("not ours")
    assert sweep_temporaries(tmp_path) == [stale] and not stale.exists() and other.exists()
    stale.write_bytes(b"again")
    save_checkpoint(checkpoint_path(tmp_path, 10), {"x": 1})  # a save sweeps too
    assert not stale.exists() and other.exists()


def test_rows_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in (2, 4, 6, 8):  # checkpoint at 5; the process is killed after the row at 8
        log.log(step, 10 * step, {"loss": 1.0 / step, **({"eval/x": 1.0} if step == 6 else {})})
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_at=(5, 50))
    resumed.log(6, 60, {"loss": 0.5})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step", "2", "4", "6"]  # integers, each step once
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.csv")] == [0.5, 0.25, 0.5]


def test_bad_metrics_value_names_file_and_line(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,env_steps,eval/return/cartpole-balance\n1,10,5.0\n2,20,oops\n")
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.plot", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{tmp_path / 'metrics.csv'}, line 3: column 'eval/return/cartpole-balance' holds 'oops', not a number" \
        in result.stderr


def test_evaluate_without_checkpoints_says_so(tmp_path):
    train.main(ONE_TASK + ["steps=8", f"out={tmp_path / 'run'}"])  # 2 random decisions: no update, one checkpoint
    for entry in (tmp_path / "run" / "checkpoints").iterdir():
        entry.unlink()
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.evaluate", str(tmp_path / "run")], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "has no checkpoint yet" in result.stderr and "resume" not in result.stderr


# ---------------------------------------------------------------------------- commands and signals


def test_help_lists_keys_groups_and_examples():
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("usage: python -m ezm_gpu.train", "envs=4096", "total worlds, split evenly across tasks",
                     "seed=0", "task_set=cartpole|hard|medium", "preset=cpu|hard|medium", "search=ezm|small",
                     "resume=runs/<run>"):
        assert expected in out, expected


def test_corrupt_checkpoint_and_missing_assets_are_one_line_errors(tmp_path, monkeypatch):
    train.main(ONE_TASK + [f"out={tmp_path / 'run'}"])
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=r"^ezm_gpu.train: checkpoint .* cannot be read: .*resume from an older "
                                         "checkpoint") as stopped:
        train.main([f"resume={tmp_path / 'run'}"])
    assert "\n" not in str(stopped.value.code)
    monkeypatch.setenv("EZM_HUMANOIDBENCH_ROOT", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EZM_HUMANOIDBENCH_URL", "http://127.0.0.1:9/humanoid-bench.tar.gz")  # nothing listens
    with pytest.raises(SystemExit, match=r"^ezm_gpu.train: HumanoidBench assets not found"):
        train.main(["tasks=[h1-walk]", "envs=2", "device=cpu", "preset=cpu", "search=small",
                    f"out={tmp_path / 'h1'}"])


def _wait_for_checkpoint(run_dir, process, timeout=300):
    start = time.time()
    while latest_checkpoint_or_none(run_dir) is None:
        assert process.poll() is None, process.communicate()
        assert time.time() - start < timeout
        time.sleep(0.5)


def latest_checkpoint_or_none(run_dir):
    folder = run_dir / "checkpoints"
    return latest_checkpoint(folder) if folder.is_dir() else None


def test_signals_exit_nonzero_with_the_resume_command_and_a_second_one_ends_at_once(tmp_path):
    run_dir = tmp_path / "run"
    long_run = ONE_TASK + ["steps=100000", "checkpoint_interval=2", f"out={run_dir}"]
    process = subprocess.Popen([sys.executable, "-m", "ezm_gpu.train", *long_run], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run_dir, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    stopped = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["counters"]["updates"]
    assert f"interrupted (SIGTERM) at update {stopped}; resume with: python -m ezm_gpu.train resume={run_dir}" in err
    assert "run directory:" not in out

    # Resumed with checkpoint writes slowed to 3 s: the first SIGINT waits for its checkpoint, the second
    # (1 s later) ends the process at once, by the signal itself, and the previous checkpoint stays intact.
    slow_saves = ("import sys, time\nfrom ezm_gpu import checkpoint, train\nsave = checkpoint.save_checkpoint\n"
                  "checkpoint.save_checkpoint = lambda *a, **k: (time.sleep(3), save(*a, **k))[1]\n"
                  "train.main(sys.argv[1:])\n")
    rows = len(read_metrics(run_dir / "metrics.csv"))
    process = subprocess.Popen([sys.executable, "-c", slow_saves, f"resume={run_dir}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    start = time.time()
    while len(read_metrics(run_dir / "metrics.csv")) <= rows:  # training has resumed
        assert process.poll() is None and time.time() - start < 300, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)
    signalled = time.time()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGINT and time.time() - signalled < 2.5
    load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))  # the last complete checkpoint is intact


def test_first_cpu_run_says_what_it_costs_shows_updates_and_no_warp_chatter(tmp_path):
    args = [a for a in ONE_TASK if not a.startswith("device=")] + ["device=auto", f"out={tmp_path / 'run'}"]
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.train", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    notice = [line for line in result.stderr.splitlines() if "no CUDA device" in line]
    assert len(notice) == 1 and "1 tasks x 60 env steps, 36 updates of batch 8, preset cpu" in notice[0]
    assert "task_set=cartpole preset=cpu search=small device=cpu envs=64" in notice[0]
    assert "load on device" not in result.stdout + result.stderr and "Warp 1.19" not in result.stdout
    assert "decisions + updates" in result.stderr and "51/51" in result.stderr  # 15 decisions + 36 updates
