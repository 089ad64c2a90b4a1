"""How many operators a piece of the hot loop dispatches: on a GPU each one that computes is a kernel launch,
and at a few microseconds per launch their number, not their arithmetic, sets the speed of small steps.

``count_ops(fn, ...)`` runs ``fn`` under a torch dispatch mode that counts every ATen operator reaching a
backend (after autograd and composite decompositions: what a device executes). Run it on the ``meta``
device to count for any size without computing anything (the model, inputs and replay on ``meta``): the
count is the same as on a real device because the hot loop has no data-dependent control flow (it reads
nothing back to the host). Used by ``benchmarks/test_opcount_bench.py`` and the launch bounds in
``tests/test_hot_loop.py``.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounts", "count_ops", "NO_KERNEL", "HotLoopCounts", "count_acting_step", "count_update"]

# Operators that run no kernel: allocations without initialisation and reshapes that are not marked as
# views (view and alias operators, ``OpOverload.is_view``, are excluded anyway).
NO_KERNEL = frozenset({"aten::empty.memory_format", "aten::empty_strided", "aten::_unsafe_view",
                       "aten::new_empty", "aten::new_empty_strided"})


@dataclasses.dataclass
class OpCounts:
    """Operators dispatched by one call."""

    total: int  # every ATen operator, views included
    kernels: int  # those that run a kernel on a GPU: not views/aliases, not in ``NO_KERNEL``
    by_op: collections.Counter  # operator name -> count (every operator)
    flops: int  # floating-point operations of the matrix products and convolutions (torch's FlopCounterMode)

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The n most frequent operators, for reports."""
        return self.by_op.most_common(n)


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_op = collections.Counter()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.by_op[name] += 1
        if not func.is_view and name not in NO_KERNEL:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, OpCounts]:
    """Calls ``fn(*args, **kwargs)`` and returns (its result, the operators it dispatched)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flop_counter, _Counter() as counter:
        result = fn(*args, **kwargs)
    return result, OpCounts(total=sum(counter.by_op.values()), kernels=counter.kernels, by_op=counter.by_op,
                            flops=int(flop_counter.get_total_flops()))


# --- the hot loop's two units, counted on the meta device -------------------------------------------------

_TREE_OPS = ("select", "backup", "sequential_halving")  # the search's tree steps (one Triton kernel each)


@contextlib.contextmanager
def _counting_tree_ops(tree_counts: collections.Counter):
    """Within it, the reference tree steps count their own kernels into ``tree_counts["kernels"]`` and the
    Triton launches that replace them on CUDA into ``tree_counts["triton_launches"]``."""
    from .kernels import reference

    def wrap(name, fn):
        def counted(tree, config, simulation, *args, **kwargs):
            with _Counter() as inner:  # (innermost mode: sees the step's operators first, then passes them on)
                out = fn(tree, config, simulation, *args, **kwargs)
            tree_counts["kernels"] += inner.kernels
            # One Triton launch per step that does work (a halving with nothing to halve returns early).
            keep = config.schedule(tree.num_root_actions).keep[simulation] if name == "sequential_halving" else 1
            tree_counts["triton_launches"] += int(keep > 0)
            return out
        return counted

    originals = {name: getattr(reference, name) for name in _TREE_OPS}
    for name, fn in originals.items():
        setattr(reference, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(reference, name, fn)


@dataclasses.dataclass
class HotLoopCounts:
    """Operators of one unit of the hot loop with the torch reference tree (what runs on CPU), and the kernel
    launches of the same unit on CUDA, where each tree step (selection, backup, halving) is one Triton kernel."""

    reference: OpCounts  # every operator, the reference tree included
    tree_kernels: int  # kernel-running operators inside the reference tree steps
    triton_tree_launches: int  # the Triton kernels that replace them on CUDA

    @property
    def cuda_launches(self) -> int:
        """Kernel launches of the unit on CUDA: the reference count with the tree steps as Triton kernels."""
        return self.reference.kernels - self.tree_kernels + self.triton_tree_launches


def _meta_model(preset: str, num_tasks: int, obs_dim: int, action_dim: int):
    from .model import PRESETS, EZMModel

    with torch.device("meta"):
        return EZMModel(PRESETS[preset](obs_dim=obs_dim, action_dim=action_dim, num_tasks=num_tasks))


def count_acting_step(preset: str, worlds: int, search, num_tasks: int, obs_dim: int,
                      action_dim: int) -> HotLoopCounts:
    """One decision's search (``acting.act``) for ``worlds`` worlds with a preset's model, on meta."""
    from .acting import act

    model = _meta_model(preset, num_tasks, obs_dim, action_dim)
    obs = torch.zeros(worlds, obs_dim, device="meta")
    task_ids = torch.zeros(worlds, dtype=torch.int64, device="meta")
    tree = collections.Counter()
    with _counting_tree_ops(tree):
        _, counts = count_ops(act, model, obs, task_ids, search, None)
    return HotLoopCounts(counts, tree["kernels"], tree["triton_launches"])


def count_update(preset: str, batch_size: int, search, num_tasks: int, obs_dim: int, action_dim: int,
                 td_steps: int = 5, unroll_steps: int = 5) -> HotLoopCounts:
    """One ``Learner.update`` (sample, reanalysis, unroll, loss, backward, Adam, priorities, EMA) on meta, with
    the batch a run uses: ``batch_size`` rounded down to a multiple of ``num_tasks`` (1024 -> 1022 for 14)."""
    from .learner import Learner, LearnerConfig
    from .replay import ReplayBuffer, ReplayConfig

    model = _meta_model(preset, num_tasks, obs_dim, action_dim)
    learner = Learner(model, LearnerConfig(ema_interval=1), search)  # the EMA step inside the count
    window = unroll_steps + td_steps + 1
    replay = ReplayBuffer(ReplayConfig(num_tasks=num_tasks, capacity=2 * window, obs_dim=obs_dim,
                                       action_dim=action_dim, num_worlds=num_tasks,
                                       batch_size=batch_size // num_tasks * num_tasks,
                                       unroll_steps=unroll_steps, td_steps=td_steps), device="meta")
    tree = collections.Counter()
    with _counting_tree_ops(tree):
        _, counts = count_ops(learner.update, replay, None)
    return HotLoopCounts(counts, tree["kernels"], tree["triton_launches"])
