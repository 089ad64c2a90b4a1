"""``python -m ezm_gpu.kernels``: runs a search and reports; rejects bad arguments before any work."""
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "ezm_gpu.kernels", *args], capture_output=True, text=True)


def test_cli_runs_a_search():
    result = _run("--trees", "8", "--simulations", "6", "--root-actions", "4", "--searches", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "8 trees x 6 simulations (K=4, k=2) on cpu [torch]" in result.stdout
    # 4 candidates, 6 simulations: halvings 4 -> 2 -> 1, the chosen action got 1 + 1 visits.
    assert "visits of the chosen action: mean 2.00 of 6; survivors per tree: 1" in result.stdout


def test_cli_rejects_bad_arguments():
    result = _run("--trees", "0")
    assert result.returncode == 2 and "--trees: must be an integer >= 1, got 0" in result.stderr
    result = _run("--device", "tpu")
    assert result.returncode == 2 and "invalid choice: 'tpu'" in result.stderr
