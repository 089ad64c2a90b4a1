"""A hot-loop step captured once and replayed: CUDA graphs on a GPU, and a CPU stand-in that tests the same thing.

A training iteration's acting search and a learner update each dispatch thousands of small kernels
(``ezm_gpu.opcount``); on a GPU their launch overhead, not their arithmetic, sets the speed. Captured as a CUDA
graph, a step's kernels are replayed with one launch. A replay repeats the recorded kernels on the recorded
memory: every Python value the step read (a counter, a branch taken, a schedule) is frozen at capture, a tensor
made during capture is the same memory at every replay, and nothing may be read back to the host. The steps
captured here are written for that: their state is device tensors updated in place (the learner's step count and
rate, Adam's step counts, ``rng.CounterRNG``'s counter, the replay's write positions), their branches are
``torch.where`` on the device.

``GraphedStep`` runs a step with one of three modes:

- ``"off"``: eagerly, every call.
- ``"cuda"``: ``warmup`` eager calls on a side stream (torch's rule: lazily made state, such as Adam's moments,
  cuBLAS workspaces and Triton's compiled kernels, is made there, outside the capture), then one call captured
  with ``torch.cuda.graph`` and replayed; every later call copies its inputs into the captured inputs and replays.
- ``"trace"``: the same protocol on any device, the call recorded by ``torch.fx``'s ``make_fx`` (the dispatched
  operators, every Python value frozen as a CUDA graph freezes it) and the recording replayed. A step that would
  replay wrongly from a CUDA graph because it depends on host state replays wrongly here too, so the capture
  path is tested on a machine without a GPU. (It runs the recording op by op: no faster than eager.)

In both replaying modes the outputs are the same tensors at every call, overwritten by the next call, as a CUDA
graph's are: use or copy them before calling again.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["MODES", "GraphedStep"]

MODES = ("off", "cuda", "trace")  # see the module docstring


class GraphedStep:
    """``step(*inputs)`` run eagerly, or captured once and replayed (``mode``, see the module docstring).

    Args:
      fn: the step; takes tensors (each call's may be new tensors of the same shapes, dtypes and device) and
        returns a tensor, or a tuple, list or dict of tensors. Everything else it reads (models, buffers,
        generators) must keep its tensors' memory from call to call (update in place).
      mode: "off" | "cuda" | "trace".
      warmup: eager calls before the capture (>= 1 where the step makes state lazily, as Adam does).
      name: for error messages.
    """

    def __init__(self, fn: Callable[..., Any], mode: str = "off", warmup: int = 2, name: str = "step"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{name}: CUDA-graph capture needs a CUDA device (none is available); use mode "
                               "'trace' to test the capture protocol without one, or 'off'")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        self.fn, self.mode, self.warmup, self.name = fn, mode, warmup, name
        self.calls = 0  # calls made (eager, capture and replays)
        self._inputs: list[torch.Tensor] = []  # the captured inputs (copied into at every replay)
        self._outputs: Any = None  # the captured outputs (overwritten at every replay)
        self._replay: Callable[[], None] | None = None

    @property
    def captured(self) -> bool:
        """The step has been captured: later calls replay it."""
        return self._replay is not None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self.calls += 1
        if self.mode == "off":
            return self.fn(*inputs)
        if self._replay is None and self.calls <= self.warmup:
            return self._warm(inputs)
        if self._replay is None:
            self._inputs = [x.detach().clone() for x in inputs]
            self._capture()  # (which also does this call's work: a replay after a CUDA capture, the trace itself)
            return self._outputs
        if len(inputs) != len(self._inputs) or any(x.shape != s.shape or x.dtype != s.dtype or x.device != s.device
                                                    for x, s in zip(inputs, self._inputs)):
            raise ValueError(f"{self.name}: a captured step replays with the inputs it was captured with "
                             f"({[(tuple(s.shape), s.dtype) for s in self._inputs]}), got "
                             f"{[(tuple(x.shape), x.dtype) for x in inputs]}")
        for static, x in zip(self._inputs, inputs):
            static.copy_(x)
        self._replay()
        return self._outputs

    def _warm(self, inputs) -> Any:
        if self.mode != "cuda":
            return self.fn(*inputs)
        # torch's rule for what will be captured: warm up on a side stream, ordered like any other work.
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = self.fn(*inputs)
        current.wait_stream(side)
        return out

    def _capture(self) -> None:
        if self.mode == "cuda":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # on torch's capture stream, with the graph's own memory pool
                self._outputs = self.fn(*self._inputs)
            graph.replay()  # a capture records without running: this call's work
            self._replay = graph.replay
            return
        from torch.fx.experimental.proxy_tensor import make_fx

        recorded: list = []

        def record(*inputs):
            out = self.fn(*inputs)
            recorded.append(out)
            return out

        module = make_fx(record)(*self._inputs)  # real tensors: recording runs this call's work too
        self._outputs = recorded[0]
        flat_outputs = _flatten(self._outputs)

        @torch.no_grad()  # the recording is below autograd: the backward's operators are in it already
        def replay() -> None:
            for static, value in zip(flat_outputs, _flatten(module(*self._inputs))):
                static.copy_(value)

        self._replay = replay


def _flatten(out: Any) -> list[torch.Tensor]:
    """The tensors of a step's output (a tensor, or a tuple, list or dict of them), in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _flatten(out[key])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    raise TypeError(f"a graphed step returns tensors, or tuples, lists or dicts of them; got {type(out).__name__}")
