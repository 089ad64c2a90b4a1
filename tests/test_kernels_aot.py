"""Every Triton search kernel compiles for an H100 (sm_90) without a GPU; registers and spills reported.

The interpreter accepts code the compiler rejects (``break`` in loops, unsupported ops); this test is
what keeps such code out. It runs ``python -m ezm_gpu.kernels.aot`` in a subprocess because this
test session runs the kernels under TRITON_INTERPRET=1. Spilling would put the per-lane tree walk in
local memory, so the tile sizes the launchers choose must compile without spills. The discrete (mctx)
selection is compiled in every variant of ``aot.DISCRETE_VARIANTS`` with A = the root actions.
"""
import json
import os
import subprocess
import sys

import pytest

from ezm_gpu.kernels import aot, triton_ops


@pytest.mark.parametrize("num_root, num_child", [(16, 2), (5, 3), (64, 4)])
def test_kernels_compile_for_sm90(num_root, num_child, record_property):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "ezm_gpu.kernels.aot", "--arch", "90", "--root-actions",
                             str(num_root), "--child-actions", str(num_child), "--json"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted({r["name"] for r in reports}) == sorted(triton_ops.KERNELS)
    # The discrete selection in every variant (rule x qtransform x switches) for A = num_root actions.
    variants = [r["constexprs"] for r in reports if r["name"] == "_discrete_select_kernel"]
    assert len(variants) == len(aot.DISCRETE_VARIANTS)
    assert all(v["BLOCK_A"] >= num_root for v in variants)
    for r in reports:
        print(f"sm_90 K={num_root} k={num_child} {r['name']} {r['constexprs']} warps={r['num_warps']}: "
              f"{r['registers']} registers, {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads")
        record_property(f"{r['name']}_K{num_root}_registers", r["registers"])
        assert 0 < r["registers"] <= 255
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['name']} spills at K={num_root}, k={num_child}"
