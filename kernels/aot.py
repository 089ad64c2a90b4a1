"""Ahead-of-time compilation of the search kernels for a GPU target, without a GPU.

``compile_kernels()`` compiles every Triton kernel of ``triton_ops`` for a target (default: H100,
``GPUTarget("cuda", 90, 32)``) with the launch parameters the search uses, and reads registers and
spills from ``ptxas -v`` (the ptxas that ships with Triton). A kernel that
would not compile for the target (e.g. uses ``break``, which the interpreter accepts) fails here.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import tempfile

from . import triton_ops

__all__ = ["KernelReport", "compile_kernels"]

_I32, _I64, _F32 = "*i32", "*i64", "*fp32"
# Argument types per kernel, in declaration order (pointers, then scalars), as the launchers pass them.
_SIGNATURES = {
    "_select_kernel": dict(
        node_visits_in=_I32, node_value_sum_in=_F32, node_reward_in=_F32, edge_child_in=_I64,
        edge_prior_in=_F32, edge_policy_in=_F32, survivors_in=_I64, minmax_lo_in=_F32, minmax_hi_in=_F32,
        parent_out=_I64, slot_out=_I64, root_slot_out=_I64, depth_out=_I64, edge_out=_I64,
        batch="i32", num_nodes="i32", num_edges="i32", num_root="i32", num_child="i32",
        num_survivors="i32", max_descents="i32",
        discount="fp32", c_visit="fp32", c_scale="fp32", value_delta="fp32"),
    "_backup_kernel": dict(
        node_visits_io=_I32, node_value_sum_io=_F32, minmax_lo_io=_F32, minmax_hi_io=_F32,
        node_reward_in=_F32, node_parent_in=_I64, leaf_value_in=_F32,
        batch="i32", num_nodes="i32", leaf="i32", path_len="i32", discount="fp32"),
    "_halve_kernel": dict(
        node_visits_in=_I32, node_value_sum_in=_F32, node_reward_in=_F32, edge_child_in=_I64,
        edge_prior_in=_F32, edge_policy_in=_F32, gumbel_in=_F32, minmax_lo_in=_F32, minmax_hi_in=_F32, survivors_io=_I64,
        batch="i32", num_nodes="i32", num_edges="i32", num_root="i32", num_survivors="i32", keep="i32",
        discount="fp32", c_visit="fp32", c_scale="fp32", value_delta="fp32"),
    "_discrete_select_kernel": dict(
        node_visits_in=_I32, node_value_in=_F32, node_raw_value_in=_F32, node_reward_in=_F32, node_discount_in=_F32,
        edge_child_in=_I64, edge_prior_in=_F32, edge_policy_in=_F32, root_invalid_in="*i1", gumbel_in=_F32,
        considered_table_in=_I32,
        parent_out=_I64, slot_out=_I64, root_slot_out=_I64, depth_out=_I64, edge_out=_I64, node_out=_I64,
        batch="i32", num_nodes="i32", num_actions="i32", simulation="i32", num_simulations="i32", max_depth="i32",
        max_considered="i32",
        pb_c_init="fp32", pb_c_base="fp32", min_value="fp32", value_range="fp32", epsilon="fp32", value_scale="fp32",
        maxvisit_init="fp32"),
    "_discrete_backup_kernel": dict(
        node_visits_io=_I32, node_value_io=_F32, node_reward_in=_F32, node_discount_in=_F32, node_parent_in=_I64,
        leaf_in=_I64, batch="i32", num_nodes="i32"),
}

# The discrete selection's variants (policy rule x qtransform x its switches) that the AOT check compiles:
# every qtransform under both rules, and completed_by_mix_value's switches off one at a time.
DISCRETE_VARIANTS = tuple(
    dict(RULE=rule, QTRANSFORM=q, RESCALE=rescale, MIXED=mixed, HAS_INVALID=True)
    for rule in (0, 1) for q, rescale, mixed in ((0, True, True), (1, True, True), (2, True, True), (2, False, True),
                                                  (2, True, False))
)


@dataclasses.dataclass
class KernelReport:
    """Resources of one compiled kernel."""

    name: str
    constexprs: dict  # tile sizes it was compiled with
    num_warps: int
    registers: int  # per thread
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack_bytes: int  # local-memory stack frame per thread
    shared_bytes: int
    ptx: str  # the generated PTX (e.g. for inspection)

    @property
    def label(self) -> str:
        """The kernel's name, with its variant constexprs (not the tiles) when it has some."""
        variant = {k: v for k, v in self.constexprs.items() if not k.startswith("BLOCK_")}
        return self.name + ("[" + ",".join(f"{k}={int(v)}" for k, v in variant.items()) + "]" if variant else "")


def _ptxas_report(ptx_asm: str) -> dict:
    """Registers and spill/stack bytes that ``ptxas -v`` reports for this PTX.

    Uses the ptxas binaries bundled with Triton, newest first (the older one rejects newer PTX).
    """
    import triton

    bin_dir = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    arch = re.search(r"\.target\s+(sm_\w+)", ptx_asm).group(1)
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx_asm)
        for ptxas in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas"):
            if not ptxas.exists():
                continue
            result = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "k.cubin")],
                                    capture_output=True, text=True)
            text = result.stdout + result.stderr
            if result.returncode == 0:
                numbers = {}
                for key, pattern in (("registers", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
                                     ("spill_loads", r"(\d+) bytes spill loads"), ("stack_bytes", r"(\d+) bytes stack frame")):
                    match = re.search(pattern, text)
                    numbers[key] = int(match.group(1)) if match else 0
                return numbers
            errors.append(f"{ptxas.name}: {text.strip()}")
    raise RuntimeError("no bundled ptxas accepted the PTX:\n" + "\n".join(errors))


def compile_kernels(arch: int = 90, num_root_actions: int = 16, num_child_actions: int = 2) -> list[KernelReport]:
    """Compiles every search kernel for ``GPUTarget("cuda", arch, 32)``; raises if one does not compile.

    Args:
      arch: CUDA compute capability as an integer (90 = H100).
      num_root_actions: K, which sets the root tile width (next power of two); also A, the actions of the
        discrete kernels (compiled in every ``DISCRETE_VARIANTS`` variant).
      num_child_actions: k, which sets the interior tile width.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    reports = []
    launches = list(triton_ops.launch_params(num_root_actions, num_child_actions).items())
    (select_name, (select_tiles, select_warps)), backup = triton_ops.discrete_launch_params(num_root_actions).items()
    launches += [(select_name, (dict(select_tiles, **variant), select_warps)) for variant in DISCRETE_VARIANTS]
    launches.append(backup)
    for name, (constexprs, num_warps) in launches:
        kernel = getattr(triton_ops, name)
        signature = dict(_SIGNATURES[name])
        missing = [arg for arg in kernel.arg_names if arg not in signature and arg not in constexprs]
        if missing:
            raise RuntimeError(f"{name}: no AOT type for arguments {missing}")
        signature.update({arg: "constexpr" for arg in constexprs})
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=target,
                                  options=dict(num_warps=num_warps, enable_fp_fusion=False,
                                               **triton_ops.COMPILE_OPTIONS.get(name, {})))
        usage = _ptxas_report(compiled.asm["ptx"])
        reports.append(KernelReport(name=name, constexprs=constexprs, num_warps=num_warps,
                                    shared_bytes=int(compiled.metadata.shared), ptx=compiled.asm["ptx"], **usage))
    return reports


def _main(argv=None) -> None:
    """``python -m ezm_gpu.kernels.aot [--arch 90] [--root-actions 16] [--child-actions 2] [--json]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100")
    parser.add_argument("--root-actions", type=int, default=16, help="K, root candidates")
    parser.add_argument("--child-actions", type=int, default=2, help="k, children per interior node")
    parser.add_argument("--json", action="store_true", help="one JSON object per kernel, without the PTX")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("AOT compilation needs TRITON_INTERPRET unset (the interpreter replaces the kernels)")
    for r in compile_kernels(args.arch, args.root_actions, args.child_actions):
        if args.json:
            print(json.dumps({k: v for k, v in dataclasses.asdict(r).items() if k != "ptx"}))
        else:
            print(f"sm_{args.arch} {r.label:15s} {r.constexprs} warps={r.num_warps}: {r.registers} registers, "
                  f"{r.spill_stores}/{r.spill_loads} B spill stores/loads, {r.stack_bytes} B stack, "
                  f"{r.shared_bytes} B shared")


if __name__ == "__main__":
    _main()
