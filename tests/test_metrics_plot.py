"""Metrics CSV (and TensorBoard) logging, and the learning-curve plot."""
import subprocess
import sys

import pytest

from ezm_gpu.metrics import MetricsLogger, read_metrics
from ezm_gpu.plot import plot_run


def test_rows_survive_and_grow_columns(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(10, 100, {"loss": 1.5})
    log.log(20, 200, {"loss": 1.0, "eval/return/cartpole-balance": 300.0})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert rows == [{"step": 10.0, "env_steps": 100.0, "loss": 1.5, "eval/return/cartpole-balance": None},
                    {"step": 20.0, "env_steps": 200.0, "loss": 1.0, "eval/return/cartpole-balance": 300.0}]
    assert any((tmp_path / "tensorboard").iterdir())  # event file written
    again = MetricsLogger(tmp_path, tensorboard=False)  # a resumed run appends to the same file
    again.log(30, 300, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [10.0, 20.0, 30.0]


def test_plot_writes_a_png_per_run(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for i in range(4):
        log.log(i, 1000 * i, {"eval/return/cartpole-balance": 200.0 * i, "eval/return/cartpole-swingup": 100.0 * i})
    png = plot_run(tmp_path, success={"cartpole-balance": 800.0})
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_cli_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.plot", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "metrics.csv does not exist" in result.stderr
    MetricsLogger(tmp_path, tensorboard=False).log(1, 1, {"loss": 1.0})
    with pytest.raises(ValueError, match="no evaluation columns"):
        plot_run(tmp_path)


def test_results_table_compares_returns_with_success_bars():
    from ezm_gpu.metrics import results_table

    table = results_table({"h1-walk": 350.0, "h1-maze": 1500.0, "cartpole-swingup": 600.0}).splitlines()
    assert table[1].split() == ["h1-walk", "350.0", "700", "0.50"]
    assert table[2].split() == ["h1-maze", "1500.0", "1200", "1.25", "solved"]
    assert table[3].split() == ["cartpole-swingup", "600.0", "600", "1.00", "solved"]
    assert table[4].split() == ["mean", "0.92"]  # (0.5 + 1.25 + 1.0) / 3


def test_success_bars_are_humanoidbench_s():
    import pytest
    from ezm_gpu.envs import TASK_SETS, success_bar

    assert [success_bar(t) for t in TASK_SETS["medium"]] == [800, 700, 700, 700, 700, 700, 700, 700, 1200]
    assert success_bar("h1hand-reach-v0") == 12000 and success_bar("h1hand-sit_hard") == 750
    assert success_bar("h1-balance_simple") == 800 and success_bar("cartpole-balance") == 800
    with pytest.raises(ValueError, match="no success bar for task 'h1-fly'"):
        success_bar("h1-fly")


def _fake_run(path, scale):
    log = MetricsLogger(path, tensorboard=False)
    for i in range(5):
        log.log(i, 1000 * i, {"eval/return/cartpole-balance": scale * i, "eval/return/cartpole-swingup": scale * i / 2})
        log.log(i, 1000 * i + 1, {"loss": 1.0})  # rows without evaluations are skipped
    log.close()
    return path


def test_several_runs_in_one_plot_and_the_summary(tmp_path):
    from ezm_gpu.plot import evaluations, summary_table

    a, b = _fake_run(tmp_path / "seed0", 100.0), _fake_run(tmp_path / "seed1", 200.0)
    assert evaluations(a)["cartpole-swingup"] == [(1000.0 * i, 50.0 * i) for i in range(5)]
    out = tmp_path / "both.png"
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.plot", str(a), str(b), "--out", str(out),
                             "--bar", "cartpole-balance=900", "--bar", "cartpole-swingup=750"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line.split() for line in summary_table([a, b]).splitlines()[1:]]
    # run, task, evaluations, final env steps, best, mean of the last three (2, 3, 4 x scale)
    assert rows[0] == ["seed0", "cartpole-balance", "5", "4000", "400.0", "300.0"]
    assert rows[3] == ["seed1", "cartpole-swingup", "5", "4000", "400.0", "300.0"]
    assert result.stdout.splitlines()[1:] == summary_table([a, b]).splitlines()
    bad = subprocess.run([sys.executable, "-m", "ezm_gpu.plot", str(a), str(b)], capture_output=True, text=True)
    assert bad.returncode == 2 and "several runs need --out" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "ezm_gpu.plot", str(a), "--bar", "x=high"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--bar takes TASK=RETURN" in bad.stderr
