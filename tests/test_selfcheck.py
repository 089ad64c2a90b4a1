"""``python -m ezm_gpu.selfcheck``: the command as a user runs it, its report, and how it fails.

Runs on the CPU at reduced sizes (the CUDA sizes are for a GPU). A cheap subset runs as a subprocess, the
way a user starts it; the failure paths run in-process through ``main()`` with a fault injected into what a
check calls (a search returning out-of-range actions, a physics step off by a constant, Triton outputs off
by one slot): the command must exit 1, name the check and the failing assertion, and still run the rest.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from ezm_gpu import selfcheck
from ezm_gpu.envs import parity
from hb_fixtures import ASSETS, requires_shared


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """``main()`` on the CPU runs torch on one thread (a process-wide setting): give the others theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def assets(monkeypatch):
    monkeypatch.setenv("EZM_HUMANOIDBENCH_ROOT", str(ASSETS))


def _user_env() -> dict:
    """A user's environment: no TRITON_INTERPRET (the test session sets it for the kernel tests)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["EZM_HUMANOIDBENCH_ROOT"] = str(ASSETS)
    return env


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ezm_gpu.selfcheck", *args], capture_output=True, text=True,
                          env=_user_env(), timeout=timeout)


def _entries(report) -> dict:
    return {entry["name"]: entry for entry in report["checks"]}


def test_console_script_lists_the_checks():
    """The installed ``ezm-gpu-selfcheck`` script (setup.py's entry point; after editing setup.py, reinstall)."""
    script = pathlib.Path(sys.executable).parent / "ezm-gpu-selfcheck"
    assert script.is_file(), f"{script} is missing: pip install -e . installs it"
    result = subprocess.run([str(script), "--list"], capture_output=True, text=True, env=_user_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["kernels", "env_step", "env_step_graph", "search", "learner_update", "capture", "training"]


@pytest.mark.parametrize("args, message", [
    (["--only", "search,nope"], "--only: unknown check(s) nope; choose from kernels, env_step, env_step_graph, search"),
    (["--only", ","], "--only: unknown check(s) (none given)"),
    (["--device", "tpu"], "argument --device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--out", "/nonexistent/dir/report.json"], "the directory /nonexistent/dir does not exist"),
])
def test_bad_arguments_exit_2_naming_what_is_allowed(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        selfcheck.main(["--device", "cpu", *args] if "--device" not in args else args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_bad_argument(capsys):
    with pytest.raises(SystemExit) as stop:
        selfcheck.main(["--device", "cuda:0"])
    assert stop.value.code == 2 and "no CUDA device is available (use --device cpu or auto)" in capsys.readouterr().err


def test_a_cheap_subset_runs_as_a_user_runs_it(tmp_path):
    out = tmp_path / "report.json"
    result = _run("--device", "cpu", "--only", "search,learner_update,env_step_graph", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ran on CPU: sizes reduced, CUDA-only checks skipped" in lines[2]
    assert [line.split()[:2] for line in lines[3:6]] == [["SKIP", "env_step_graph"], ["PASS", "search"],
                                                         ["PASS", "learner_update"]]
    assert lines[-1].startswith("selfcheck passed: 2 passed, 0 failed, 1 skipped") and str(out) in lines[-1]
    report = json.loads(out.read_text())
    assert report["ran_on_cpu"] is True and report["passed"] is True and report["device"]["type"] == "cpu"
    assert report["counts"] == {"passed": 2, "failed": 0, "skipped": 1} and report["torch_threads"] == 1
    for name in ("python", "torch", "triton", "warp-lang", "mujoco", "mujoco-warp"):
        assert report["versions"][name], name
    checks = _entries(report)
    assert "CUDA-graph replay needs a CUDA device; ran on cpu" in checks["env_step_graph"]["reason"]
    search, learner = checks["search"]["metrics"], checks["learner_update"]["metrics"]
    assert search["trees"] == 256 and search["backend"] == "torch" and search["simulations"] == 32
    assert search["ms_per_search"] > 0 and search["tree_simulations_per_s"] > 0
    assert learner["preset"] == "hard" and learner["parameters"] > 1e7 and learner["updates_per_s"] > 0
    assert all(loss == loss for loss in learner["losses"]) and learner["process_peak_rss_bytes"] > 0
    assert all(entry["seconds"] > 0 and entry["error"] is None for entry in report["checks"])
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_a_failing_check_exits_1_names_it_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    from ezm_gpu import planning

    search = planning.search_positions

    def out_of_range(*args, **kwargs):  # a search whose chosen actions leave [-1, 1]
        out, value = search(*args, **kwargs)
        return dataclasses.replace(out, action=out.action + 2), value

    monkeypatch.setattr(planning, "search_positions", out_of_range)
    out = tmp_path / "report.json"
    assert selfcheck.main(["--device", "cpu", "--only", "search,learner_update", "--out", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "FAIL  search" in stdout and "CheckFailed" not in stdout and "actions outside [-1, 1]" in stdout
    assert "PASS  learner_update" in stdout and "selfcheck FAILED (search): 1 passed, 1 failed" in stdout
    report = json.loads(out.read_text())
    checks = _entries(report)
    assert report["passed"] is False and checks["search"]["status"] == "failed"
    assert checks["search"]["error"].startswith("actions outside [-1, 1]: max |a| = ")
    assert "in check_search" in checks["search"]["traceback"]
    assert checks["learner_update"]["status"] == "passed"


def test_an_unexpected_exception_is_a_failure_with_its_type(monkeypatch, tmp_path, capsys):
    def broken(ctx):
        raise KeyError("weights")

    monkeypatch.setattr(selfcheck, "CHECKS", [selfcheck.Check("broken", broken, "raises"), *selfcheck.CHECKS[3:4]])
    assert selfcheck.main(["--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    assert "FAIL  broken" in capsys.readouterr().out
    checks = _entries(json.loads((tmp_path / "r.json").read_text()))
    assert checks["broken"]["error"] == "KeyError: 'weights'" and checks["search"]["status"] == "passed"


@requires_shared
def test_env_step_checks_each_task_and_names_the_one_outside_the_gap(monkeypatch, tmp_path, capsys, assets):
    monkeypatch.setattr(selfcheck, "ENV_TASKS", ("h1-walk", "h1hand-reach"))
    out = tmp_path / "report.json"
    assert selfcheck.main(["--device", "cpu", "--only", "env_step", "--out", str(out)]) == 0
    metrics = _entries(json.loads(out.read_text()))["env_step"]["metrics"]
    assert set(metrics["tasks"]) == {"h1-walk", "h1hand-reach"}
    for task in metrics["tasks"].values():
        assert task["reference"] == "MuJoCo C (float64)" and task["violations"] == []
        assert 0 <= task["qvel_gap_fraction"] < 1e-3 and task["env_steps_per_s"] > 0 and task["worlds"] == 8
    mujoco_step = parity.mujoco_step

    def off_for_walk(mj_model, recording, frame_skip):  # h1-walk's C step 5 rad/s off: a fifth of a step's change
        step = mujoco_step(mj_model, recording, frame_skip)
        return dict(step, qvel=step["qvel"] + 5.0) if recording.task == "h1-walk" else step

    monkeypatch.setattr(parity, "mujoco_step", off_for_walk)
    assert selfcheck.main(["--device", "cpu", "--only", "env_step", "--out", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "FAIL  env_step" in stdout and "1 of 2 tasks outside the physics gap: h1-walk: qvel |diff| median" in stdout
    entry = _entries(json.loads(out.read_text()))["env_step"]
    assert "h1-walk: qvel |diff| median 5.000" in entry["error"] and "h1hand-reach" not in entry["error"]
    assert entry["metrics"]["tasks"]["h1hand-reach"]["violations"] == []  # the other task still ran


class _StandInCuda(selfcheck.Context):
    """A context that takes the checks' CUDA branches while its device is the CPU (no GPU here)."""

    cuda = True

    def synchronize(self):
        pass

    def memory(self):
        return {}


@requires_shared
def test_the_cuda_branch_of_the_env_checks_on_a_stand_in_device(monkeypatch, tmp_path, assets):
    """The GPU's way: CPU recordings (made once for both checks) tiled over the device's worlds, each path's
    step against them, and the graph path against the direct one. On the CPU both are the CPU's step."""
    monkeypatch.setattr(selfcheck, "ENV_TASKS", ("h1-walk",))
    sizes = dataclasses.replace(selfcheck.CPU_SIZES, env_worlds=10, env_episodes=2, env_steps=2, env_timed_steps=1)
    ctx = _StandInCuda(device=torch.device("cpu"), sizes=sizes, workdir=tmp_path)
    direct, graph = selfcheck.check_env_step(ctx), selfcheck.check_env_step_graph(ctx)
    assert (direct["physics"], graph["physics"]) == ("direct launches", "CUDA-graph replay")
    walk, walk_graph = direct["tasks"]["h1-walk"], graph["tasks"]["h1-walk"]
    assert walk["worlds"] == 10 and walk["reference_states"] == 4 and walk["reference"] == "MuJoCo-Warp on the CPU"
    assert walk["violations"] == [] and walk["qvel_gap_fraction"] < 1e-6 and walk["env_steps_per_s"] > 0
    assert walk_graph["graph_vs_direct_max_abs_qvel"] == 0.0 and "graph_vs_direct_max_abs_qvel" not in walk
    assert [key for key in ctx.cache if key[0] == "env_reference"] == [("env_reference", "h1-walk")]


@requires_shared
def test_training_check_drives_the_trainer_for_its_time(monkeypatch, tmp_path, assets):
    sizes = dataclasses.replace(selfcheck.CPU_SIZES, training_seconds=6.0, training_overrides=(
        "tasks=[h1-walk]", "envs=2", "preset=cpu", "search=small", "batch_size=8", "start_transitions=24",
        "log_interval=5"))
    monkeypatch.setattr(selfcheck, "CPU_SIZES", sizes)
    out = tmp_path / "report.json"
    assert selfcheck.main(["--device", "cpu", "--only", "training", "--out", str(out)]) == 0
    metrics = _entries(json.loads(out.read_text()))["training"]["metrics"]
    assert metrics["tasks"] == 1 and metrics["envs"] == 2 and metrics["updates"] > 0 and metrics["decisions"] > 1
    assert metrics["phases"]["random"]["decisions"] == 12 and metrics["phases"]["first_search"]["decisions"] == 1
    assert metrics["env_steps_per_s"] > 0 and metrics["updates_per_s"] > 0 and 6.0 <= metrics["seconds"] < 30


def test_capture_check_holds_the_replays_to_eager_steps(monkeypatch, tmp_path, capsys):
    """The ``capture`` check on the CPU (the trace stand-in) with the small test learner: it passes; then with a
    replay that runs nothing (stale outputs, as a graph replayed on the wrong memory would give), it fails on
    the update's losses and names the check."""
    from ezm_gpu.graphs import GraphedStep
    from test_learner import _filled_replay, _learner

    monkeypatch.setattr(selfcheck, "_hard_learner", lambda ctx: (_learner(ema_interval=1), _filled_replay()))
    monkeypatch.setattr(selfcheck, "CPU_SIZES", dataclasses.replace(
        selfcheck.CPU_SIZES, search_trees=8, searches=2, learner_updates=2))
    out = tmp_path / "report.json"
    assert selfcheck.main(["--device", "cpu", "--only", "capture", "--out", str(out)]) == 0
    metrics = _entries(json.loads(out.read_text()))["capture"]["metrics"]
    assert metrics["mode"] == "trace" and metrics["update_ms_eager"] > 0 and metrics["act_ms_trace"] > 0
    capture = GraphedStep._capture

    def replay_nothing(self):
        capture(self)
        self._replay = lambda: None

    monkeypatch.setattr(GraphedStep, "_capture", replay_nothing)
    assert selfcheck.main(["--device", "cpu", "--only", "capture", "--out", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "FAIL  capture" in stdout and "the captured update's losses differ from eager ones" in stdout


def test_kernels_check_holds_triton_to_the_agreement_rule(monkeypatch, tmp_path, capsys):
    """In-process under the test session's TRITON_INTERPRET=1, at small sizes; then with the Triton search off by
    one root slot in every tree, which no near-tie excuses."""
    from ezm_gpu import kernels

    sizes = dataclasses.replace(selfcheck.CPU_SIZES, kernel_trees=32, sweep_cases=2, sweep_max_trees=16,
                                sweep_max_simulations=6)
    monkeypatch.setattr(selfcheck, "CPU_SIZES", sizes)
    out = tmp_path / "report.json"
    assert selfcheck.main(["--device", "cpu", "--only", "kernels", "--out", str(out)]) == 0
    metrics = _entries(json.loads(out.read_text()))["kernels"]["metrics"]
    assert metrics["backend"] == "triton (interpreter)" and metrics["cases"] == 4 and metrics["trees"] >= 64
    assert metrics["identical"] == metrics["trees"] and metrics["worst_float_excess"] <= 0
    assert metrics["ezm_h1_triton_ms"] > 0 and metrics["ezm_h1hand_reference_ms"] > 0
    search = kernels.sampled_gumbel_search

    def off_by_one(*args, backend=None, **kwargs):
        out = search(*args, backend=backend, **kwargs)
        k = out.visit_counts.shape[1]
        return dataclasses.replace(out, action_index=(out.action_index + 1) % k) if backend == "triton" and k > 1 \
            else out

    monkeypatch.setattr(kernels, "sampled_gumbel_search", off_by_one)
    assert selfcheck.main(["--device", "cpu", "--only", "kernels", "--out", str(out)]) == 1
    error = _entries(json.loads(out.read_text()))["kernels"]["error"]
    assert error.startswith("Triton differs from the torch reference beyond the agreement rule: trees=")
    assert "differ otherwise" in error and "FAIL  kernels" in capsys.readouterr().out


def test_a_check_in_a_subprocess_reports_through_its_child(tmp_path):
    """The CPU's way to run the kernels check (a child process with TRITON_INTERPRET=1), with a cheap check."""
    ctx = selfcheck.Context(device=torch.device("cpu"), sizes=selfcheck.CPU_SIZES, workdir=tmp_path)
    metrics = selfcheck._in_subprocess(ctx, "search", {"EZM_SELFCHECK_TEST": "1"})
    assert metrics["trees"] == 256 and metrics["summary"].endswith("(subprocess with EZM_SELFCHECK_TEST=1)")
    with pytest.raises(selfcheck.CheckSkipped, match="CUDA-graph replay needs a CUDA device"):
        selfcheck._in_subprocess(ctx, "env_step_graph", {})
    with pytest.raises(selfcheck.CheckFailed, match="(?s)exited 2 without a report: .*unknown check"):
        selfcheck._in_subprocess(ctx, "nope", {})


def test_registry_names_are_unique_and_usable_as_arguments():
    with pytest.raises(ValueError, match="registered already"):
        selfcheck.register(selfcheck.Check("search", lambda ctx: {}, "again"))
    with pytest.raises(ValueError, match="lower_snake_case"):
        selfcheck.register(selfcheck.Check("Capture-Step", lambda ctx: {}, "bad name"))


def test_report_is_strict_json(tmp_path):
    path = tmp_path / "r.json"
    selfcheck.write_report(path, {"a": float("nan"), "b": [torch.tensor(2.5), float("inf")], "c": torch.ones(2)})
    assert json.loads(path.read_text()) == {"a": "nan", "b": [2.5, "inf"], "c": [1.0, 1.0]}
