"""Run metrics: one CSV row per log event (the plot's source) and the same scalars to TensorBoard."""
from __future__ import annotations

import csv
import os
import pathlib
from typing import Mapping, Optional

__all__ = ["MetricsLogger", "read_metrics", "results_table", "CSV_NAME"]

CSV_NAME = "metrics.csv"


class MetricsLogger:
    """Appends rows ``{step, env_steps, <name>: value}`` to ``run_dir/metrics.csv`` and TensorBoard.

    The CSV header is the union of names seen so far; a row with a new name rewrites the file with the
    wider header (rare: names are fixed after the first evaluation). Rows are flushed as written, so a
    killed run keeps everything logged before it.
    """

    def __init__(self, run_dir: os.PathLike | str, tensorboard: bool = True):
        self.path = pathlib.Path(run_dir) / CSV_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows = read_metrics(self.path) if self.path.exists() else []
        self._fields = list(dict.fromkeys(k for row in self._rows for k in row)) or ["step", "env_steps"]
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def log(self, step: int, env_steps: int, values: Mapping[str, float]) -> None:
        """One row at update ``step`` / ``env_steps`` total env steps; values are floats (host numbers)."""
        row = {"step": int(step), "env_steps": int(env_steps), **{k: float(v) for k, v in values.items()}}
        new = [k for k in row if k not in self._fields]
        self._rows.append(row)
        if new:
            self._fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self._fields).writerow(row)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, float(value), global_step=int(env_steps))
            self._writer.flush()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self._fields)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: os.PathLike | str) -> list[dict[str, Optional[float]]]:
    """Rows of a metrics CSV as dicts of floats (None where a row has no value for a column)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def results_table(scores: Mapping[str, float]) -> str:
    """Per-task evaluation returns against the tasks' success bars (``ezm_gpu.envs.success_bar``), and the
    mean of return / bar over the set (the spec's summary score). ``scores``: task id -> return."""
    from ezm_gpu.envs import success_bar

    lines = [f"{'task':24s} {'return':>10s} {'success bar':>12s} {'return/bar':>11s}"]
    ratios = []
    for task, score in scores.items():
        bar = success_bar(task)
        ratios.append(score / bar)
        lines.append(f"{task:24s} {score:10.1f} {bar:12.0f} {ratios[-1]:11.2f}{'  solved' if score >= bar else ''}")
    lines.append(f"{'mean':24s} {'':10s} {'':12s} {sum(ratios) / max(len(ratios), 1):11.2f}")
    return "\n".join(lines)
