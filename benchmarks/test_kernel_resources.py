"""Registers and spills of the compiled kernels for sm_90 (H100), with the AOT compile time.

    python -m pytest benchmarks/test_kernel_resources.py --benchmark-columns=mean -s
"""
import os

import pytest

from ezm_gpu.kernels.aot import compile_kernels


@pytest.mark.parametrize("num_root, num_child", [(16, 2), (32, 2), (64, 4)])
def test_sm90_kernel_resources(benchmark, num_root, num_child):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("AOT compilation needs TRITON_INTERPRET unset")
    reports = benchmark.pedantic(compile_kernels, kwargs=dict(arch=90, num_root_actions=num_root, num_child_actions=num_child),
                                 rounds=1, iterations=1)
    benchmark.group = "AOT compile sm_90"
    for r in reports:
        benchmark.extra_info[r.label] = dict(registers=r.registers, spill_stores=r.spill_stores,
                                            spill_loads=r.spill_loads, shared_bytes=r.shared_bytes,
                                            num_warps=r.num_warps, **r.constexprs)
        print(f"K={num_root} k={num_child} {r.label}: {r.registers} regs, {r.spill_stores}/{r.spill_loads} B "
              f"spill st/ld, {r.shared_bytes} B shared, warps={r.num_warps}, {r.constexprs}")
