"""The progress bar of a training run, and its throughput figures."""
from __future__ import annotations

import time

__all__ = ["Progress"]


class Progress:
    """The progress bar (tqdm over iterations = one env step of every world) with throughput and returns.

    ``rates`` gives env steps/s (all worlds) and updates/s since the previous log row (wall clock, host
    side: on CUDA the log's own reads have just synchronised) and the wall time since training started
    in this process.
    """

    def __init__(self, total: int, initial: int, disable: bool = False):
        """``disable``: no bar on the terminal (the figures still count; ``python -m ezm_gpu.selfcheck``)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, desc="decisions + updates",
                        disable=disable)
        self.last = None
        self.start = time.perf_counter()

    def describe(self, text: str) -> None:
        self.bar.set_description(text)

    def restart_clock(self) -> None:
        self.last = None

    def rates(self, env_steps: int, updates: int) -> dict:
        now = time.perf_counter()
        out = {"time/process_s": now - self.start}  # wall time since this process started training
        if self.last is not None and now > self.last[0]:
            seconds = now - self.last[0]
            out.update({"perf/env_steps_per_s": (env_steps - self.last[1]) / seconds,
                        "perf/updates_per_s": (updates - self.last[2]) / seconds})
        self.last = (now, env_steps, updates)
        return out

    def show(self, row: dict, tasks: list) -> None:
        shown = {}
        if "perf/env_steps_per_s" in row:
            shown = {"steps/s": f"{row['perf/env_steps_per_s']:.0f}", "upd/s": f"{row['perf/updates_per_s']:.2f}"}
        for task in tasks:
            if f"episode/return/{task}" in row:
                shown[task] = f"{row[f'episode/return/{task}']:.0f}"
        self.bar.set_postfix(shown, refresh=False)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
