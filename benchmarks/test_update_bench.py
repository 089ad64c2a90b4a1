"""One EZ-M training update (reanalysis + unrolled loss + Adam step) at batch 512.

    cd benchmarks && python -m pytest test_update_bench.py --benchmark-columns=mean,rounds -s

extra_info splits the time into reanalysis (EMA-model searches over B·(K+1) roots) and gradient
(unroll, loss, backward, optimizer step).
"""
import time

import pytest
import torch

from conftest import cuda_or_skip
from ezm_gpu.planning import SearchSettings
from ezm_gpu.learner import Learner, LearnerConfig
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.replay import ReplayBuffer, ReplayConfig

BATCH = 512


def _setup(preset, device):
    config = getattr(ModelConfig, preset)()
    model = EZMModel(config).to(device)
    tasks = config.num_tasks
    replay = ReplayBuffer(ReplayConfig(num_tasks=tasks, capacity=4096, obs_dim=config.obs_dim,
                                       action_dim=config.action_dim, num_worlds=tasks * 4,
                                       batch_size=BATCH // tasks * tasks), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.arange(tasks, device=device).repeat_interleave(4)
    for t in range(200):
        replay.add(ids, torch.randn(tasks * 4, config.obs_dim, device=device, generator=g),
                   torch.rand(tasks * 4, config.action_dim, device=device, generator=g) * 2 - 1,
                   torch.rand(tasks * 4, device=device, generator=g),
                   torch.full((tasks * 4,), t % 100 == 99, device=device),
                   torch.randn(tasks * 4, config.obs_dim, device=device, generator=g), validate=False)
    return Learner(model, LearnerConfig(), SearchSettings()), replay, g


def _run(benchmark, preset, device):
    learner, replay, g = _setup(preset, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    import ezm_gpu.learner as learner_module
    spent = {"reanalysis": 0.0}
    original = learner_module.reanalyze

    def timed_reanalyze(*args, **kwargs):
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        spent["reanalysis"] += time.perf_counter() - start
        return out

    learner_module.reanalyze = timed_reanalyze
    try:
        learner.update(replay, g)  # warm-up
        spent["reanalysis"] = 0.0
        benchmark.group = f"update batch {BATCH} on {device}"
        rounds = 2
        benchmark.pedantic(lambda: (learner.update(replay, g), sync()), rounds=rounds, iterations=1)
    finally:
        learner_module.reanalyze = original
    mean = benchmark.stats.stats.mean
    reanalysis = spent["reanalysis"] / rounds
    benchmark.extra_info.update(preset=preset, device=device, batch=BATCH, reanalysis_s=reanalysis,
                                gradient_s=mean - reanalysis, threads=torch.get_num_threads())
    print(f"{preset} on {device}: update {mean:.2f} s = reanalysis {reanalysis:.2f} s + gradient {mean - reanalysis:.2f} s")


@pytest.mark.parametrize("preset", ["cpu", "hard"])
def test_update_cpu(benchmark, preset):
    _run(benchmark, preset, "cpu")


@pytest.mark.parametrize("preset", ["cpu", "hard"])
def test_update_cuda(benchmark, preset):
    _run(benchmark, preset, cuda_or_skip())
