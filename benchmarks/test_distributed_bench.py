"""Data-parallel learner scaling on this CPU: 1 vs 2 ranks launched by torchrun (gloo), the same global batch.

``cd benchmarks && python -m pytest test_distributed_bench.py --benchmark-columns=mean,rounds -s``
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
GLOBAL_BATCH = 1024  # the release's batch


@pytest.mark.parametrize("ranks", [1, 2])
def test_data_parallel_updates(benchmark, tmp_path, ranks):
    out = tmp_path / "rate.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch():
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={ranks}", str(HERE / "distributed_updates.py"), str(out), str(GLOBAL_BATCH)],
                                capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(out.read_text())

    rate = benchmark.pedantic(launch, rounds=1, iterations=1)
    benchmark.extra_info.update(rate)
    print(f"\n{ranks} rank(s), global batch {GLOBAL_BATCH} ({rate['batch_per_rank']} per rank): "
          f"{rate['updates_per_s']:.2f} updates/s")
