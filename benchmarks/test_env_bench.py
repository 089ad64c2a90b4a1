"""Env step benchmarks: steps/s of the batched HumanoidBench tasks, and the physics share of a step.

    cd benchmarks && python -m pytest test_env_bench.py --benchmark-columns=mean,min,rounds

``extra_info``: env_steps_per_s (worlds x steps / s) and physics_share (physics time / step time).
HumanoidBench's own one-env rate is measured when ``humanoid_bench`` is importable (not here).
"""
import time

import pytest
import torch

from conftest import HUMANOIDBENCH_ROOT as ROOT, cuda_or_skip
from ezm_gpu import envs


def _bench(benchmark, task, worlds, device, rounds):
    env = envs.make(task, worlds, device=device, seed=0, root=ROOT)
    env.reset()
    g = torch.Generator().manual_seed(0)
    actions = [(torch.rand(worlds, env.action_dim, generator=g) * 2 - 1).to(device) for _ in range(4)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    env.step(actions[0], validate=False)  # warm-up: kernel compilation, graph capture
    sync()
    counter = iter(range(10 ** 9))

    def step():
        env.step(actions[next(counter) % 4], validate=False)
        sync()

    benchmark.group = f"{task} x{worlds} on {device}"
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    start = time.perf_counter()
    for _ in range(rounds):
        env._physics()
    sync()
    physics = (time.perf_counter() - start) / rounds
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(task=task, worlds=worlds, device=device, env_steps_per_s=worlds / mean,
                                physics_share=min(1.0, physics / mean))
    env.check()


# (task, worlds) on the CPU: h1 (nv 25, dense Jacobian) at 64 and 1024 worlds; h1hand (nv 75-87, sparse
# Jacobian; ~4x the work per world) at 64. On CUDA every task at 1024, 4096 and 8192 worlds.
TASKS = ["h1-walk", "h1-hurdle", "h1hand-walk", "h1hand-balance_hard"]
CPU_CASES = [(task, worlds) for task in TASKS for worlds in ([64] if task.startswith("h1hand") else [64, 1024])]


@pytest.mark.parametrize("task, worlds", CPU_CASES)
def test_env_step_cpu(benchmark, task, worlds):
    _bench(benchmark, task, worlds, "cpu", rounds=5 if worlds <= 64 else 2)


@pytest.mark.parametrize("worlds", [1024, 4096, 8192])
@pytest.mark.parametrize("task", TASKS)
def test_env_step_cuda(benchmark, task, worlds):
    _bench(benchmark, task, worlds, cuda_or_skip(), rounds=20)


def test_humanoidbench_one_env(benchmark):
    """The original's rate, one env in this process, for comparison (needs humanoid_bench installed)."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("humanoid_bench")
    env = gym.make("h1-walk-v0")
    env.reset(seed=0)
    benchmark.group = "humanoidbench original x1"
    benchmark(lambda: env.step(env.action_space.sample()))
    benchmark.extra_info.update(env_steps_per_s=1 / benchmark.stats.stats.mean)
