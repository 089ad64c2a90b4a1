"""CUDA-graph capture of MuJoCo-Warp physics, on a stream where CUDA allows a capture.

torch's current stream is, unless the caller chose another, the legacy default (NULL) stream, and
``cudaStreamBeginCapture`` is not allowed on it (Warp's maintainers' answer to the same error: capture
on a non-default stream). The capture therefore runs on a dedicated stream ordered after the current
one; the graph it records is later replayed on whatever stream is current. MuJoCo-Warp's solver loops
are conditional graph nodes, which need CUDA driver 12.4 or newer.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["MIN_DRIVER_FOR_GRAPHS", "check_graph_driver", "capture_graph", "CapturedGraph"]

MIN_DRIVER_FOR_GRAPHS = (12, 4)  # conditional graph nodes (wp.capture_while in MuJoCo-Warp's solver)


def check_graph_driver(version: Optional[tuple] = None) -> None:
    """Raises RuntimeError unless the CUDA driver can run MuJoCo-Warp's graphs (>= 12.4).

    version: (major, minor) to check; None reads the installed driver's (``wp.get_cuda_driver_version``).
    """
    if version is None:
        import warp as wp

        version = wp.get_cuda_driver_version()
    if version is None:
        raise RuntimeError("no CUDA driver found: the CUDA env path needs an NVIDIA driver supporting CUDA "
                           f"{MIN_DRIVER_FOR_GRAPHS[0]}.{MIN_DRIVER_FOR_GRAPHS[1]} or newer")
    if tuple(version)[:2] < MIN_DRIVER_FOR_GRAPHS:
        raise RuntimeError(
            f"the CUDA driver supports CUDA {version[0]}.{version[1]}; MuJoCo-Warp's graphs (conditional nodes) "
            f"need {MIN_DRIVER_FOR_GRAPHS[0]}.{MIN_DRIVER_FOR_GRAPHS[1]} or newer: update the NVIDIA driver "
            "(or run the envs on device='cpu')")


class CapturedGraph:
    """A recorded Warp graph and the stream it was captured on (kept alive as long as the graph)."""

    def __init__(self, graph, stream: "torch.cuda.Stream", warp_stream) -> None:
        self.graph, self.stream, self.warp_stream = graph, stream, warp_stream

    def launch(self) -> None:
        """Replays the graph on Warp's current stream (the env's scope makes it torch's current one)."""
        import warp as wp

        wp.capture_launch(self.graph)


def capture_graph(device: torch.device, record: Callable[[], None]) -> CapturedGraph:
    """Records ``record()``'s Warp launches into a CUDA graph, on a dedicated stream of ``device``.

    The side stream first waits for torch's current stream (work queued before, such as the controls
    just written), and the current stream waits for the side stream afterwards, so the capture is
    ordered like any other launch. Nothing runs during a capture: launch the returned graph to step.
    """
    import warp as wp

    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    warp_stream = wp.stream_from_torch(stream)
    with wp.ScopedStream(warp_stream):
        with wp.ScopedCapture() as capture:
            record()
    current.wait_stream(stream)
    return CapturedGraph(capture.graph, stream, warp_stream)
