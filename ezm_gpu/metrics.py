"""Run metrics: one CSV row per log event (the plot's source) and the same scalars to TensorBoard."""
from __future__ import annotations

import csv
import os
import pathlib
from typing import Mapping, Optional

__all__ = ["MetricsLogger", "read_metrics", "CSV_NAME"]

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
