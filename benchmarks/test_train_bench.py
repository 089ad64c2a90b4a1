"""End-to-end throughput of ``python -m ezm_gpu.train``: env steps/s (all worlds) and updates/s.

    cd benchmarks && python -m pytest test_train_bench.py --benchmark-columns=mean,rounds -s

Each case trains for a fixed number of iterations with the ``cpu`` model preset and the small search,
and reads the rates the run itself logs (``perf/env_steps_per_s``, ``perf/updates_per_s`` in
metrics.csv, measured between log rows, evaluation time excluded). The benchmark's own time is the whole
run (start-up, warm-up and the final checkpoint included). CUDA cases skip without a GPU.
"""
import statistics

import pytest

from conftest import cuda_or_skip
from ezm_gpu import train
from ezm_gpu.metrics import read_metrics

CASES = {  # name -> (overrides: the run's tasks and worlds; worlds per task)
    "cartpole": (["tasks=cartpole", "envs=64", "batch_size=128"], 32),
    "h1-walk": (["tasks=[h1-walk]", "envs=64", "batch_size=128"], 64),
}
ITERATIONS = 60  # env steps per world; the first 8 act randomly (warm-up), the rest search + update
WARMUP = 8
UPDATES_PER_DECISION = 4  # after the warm-up (as measured: 64 worlds x 8 samples per env step / batch 128)


def _train(tmp_path, name, device, extra=()):
    out = tmp_path / name
    overrides, worlds_per_task = CASES[name]
    # steps and start_transitions count env steps per task: every world of a task steps once per iteration
    cfg = train.compose_config(overrides + [
        f"device={device}", "preset=cpu", "search=small", f"steps={ITERATIONS * worlds_per_task}",
        f"start_transitions={WARMUP * worlds_per_task}",
        # the update budget counts per env step per task: 4 per decision over the 52 decisions after the warm-up
        f"updates_per_step={UPDATES_PER_DECISION * (ITERATIONS - WARMUP) / (ITERATIONS * worlds_per_task)}",
        "final_updates=0",
        "log_interval=20", "eval_interval=1000000", "checkpoint_interval=1000000", "eval_steps=10",
        "episode_length=1000", f"out={out}", *extra])
    train.run(cfg)
    return out


def _rates(run_dir):
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r.get("perf/env_steps_per_s") is not None]
    assert rows, "the run logged no throughput rows"
    return (statistics.median(r["perf/env_steps_per_s"] for r in rows),
            statistics.median(r["perf/updates_per_s"] for r in rows))


def _bench(benchmark, tmp_path, name, device):
    runs = []
    benchmark.pedantic(lambda: runs.append(_train(tmp_path / str(len(runs)), name, device)), rounds=1, iterations=1)
    steps, updates = _rates(runs[-1])
    benchmark.extra_info.update(env_steps_per_s=round(steps, 1), updates_per_s=round(updates, 2))
    print(f"\n{name} on {device}: {steps:.1f} env steps/s, {updates:.2f} updates/s")


@pytest.mark.parametrize("name", list(CASES))
def test_train_cpu(benchmark, tmp_path, name):
    _bench(benchmark, tmp_path, name, "cpu")


@pytest.mark.parametrize("name", list(CASES))
def test_train_cuda(benchmark, tmp_path, name):
    cuda_or_skip()
    _bench(benchmark, tmp_path, name, "cuda")
