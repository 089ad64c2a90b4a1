"""Operators dispatched per acting step and per update (``ezm_gpu.opcount``), counted on the meta device: EZ-M's
release search (N = 32, K = 16, k = 2), the hard preset (obs 177, 61 actions, 14 tasks), 4096 worlds per
acting step and the hard set's batch of 1024 per update.

    cd benchmarks && python -m pytest test_opcount_bench.py --benchmark-columns=rounds -s

Nothing is computed (meta tensors), so the counts are those of any device; ``cuda_launches`` replaces the
reference tree's operators by the three Triton kernels per simulation that run on CUDA. extra_info holds
every count and the ten most frequent operators; benchmarks/README.md records them.
"""
import pytest

from ezm_gpu.opcount import count_acting_step, count_update
from ezm_gpu.planning import SearchSettings

HARD = dict(num_tasks=14, obs_dim=177, action_dim=61)  # the hard set's padded sizes


@pytest.mark.parametrize("unit, size", [("acting step", 4096), ("update", 1024)])
def test_operators_per_unit(benchmark, unit, size):
    def count():
        if unit == "acting step":
            return count_acting_step("hard", size, SearchSettings(), **HARD)
        return count_update("hard", size, SearchSettings(), **HARD)

    benchmark.group = "operators dispatched (hard preset, release search)"
    counts = benchmark.pedantic(count, rounds=1, iterations=1)
    benchmark.extra_info.update(unit=unit, size=size, operators=counts.reference.total,
                                kernels_reference_tree=counts.reference.kernels, tree_kernels=counts.tree_kernels,
                                triton_tree_launches=counts.triton_tree_launches, cuda_launches=counts.cuda_launches,
                                flops=counts.reference.flops,
                                top=counts.reference.top(10))
    print(f"\n{unit} ({size}): {counts.reference.total} operators, {counts.reference.kernels} kernels with the "
          f"reference tree ({counts.tree_kernels} in the tree), {counts.cuda_launches} launches on CUDA "
          f"({counts.triton_tree_launches} Triton), {counts.reference.flops / 1e12:.3f} TFLOP; top: {counts.reference.top(8)}")
    assert counts.cuda_launches < counts.reference.kernels
