"""Run metrics: one CSV row per log event (the plot's source) and the same scalars to TensorBoard."""
from __future__ import annotations

import csv
import os
import pathlib
from typing import Mapping, Optional

__all__ = ["MetricsLogger", "read_metrics", "results_table", "CSV_NAME"]

CSV_NAME = "metrics.csv"
INTEGER_COLUMNS = ("step", "env_steps")  # update count and env steps per task: written as integers


class MetricsLogger:
    """Appends rows ``{step, env_steps, <name>: value}`` to ``run_dir/metrics.csv`` and TensorBoard.

    The CSV header is the union of names seen so far; a row with a new name rewrites the file with the
    wider header (rare: names are fixed after the first evaluation). Rows are flushed as written, so a
    killed run keeps everything logged before it.
    """

    def __init__(self, run_dir: os.PathLike | str, tensorboard: bool = True,
                 resume_at: Optional[tuple[int, int]] = None):
        """``resume_at``: (update, env_steps) of the checkpoint a run resumes from; rows and TensorBoard
        events logged after it (by a process killed before its next checkpoint) are dropped, so the
        resumed run does not log them twice."""
        self.path = pathlib.Path(run_dir) / CSV_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(self.path) if self.path.exists() else []
        for row in rows:  # the counters are integers, whatever the CSV held
            row.update({key: int(row[key]) for key in INTEGER_COLUMNS if row.get(key) is not None})
        self._rows = [row for row in rows if resume_at is None or row["step"] <= resume_at[0]]
        self._fields = list(dict.fromkeys(k for row in rows for k in row)) or ["step", "env_steps"]
        if len(self._rows) < len(rows):
            self._rewrite()
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events at or after it that an earlier process wrote
            purge = None if resume_at is None else resume_at[1] + 1
            self._writer = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=purge)

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
        rows = list(csv.DictReader(f))
    return [{key: _number(path, line, key, text) for key, text in row.items()}
            for line, row in enumerate(rows, start=2)]  # line 1 is the header


def _number(path, line: int, key, text) -> Optional[float]:
    if text in ("", None):
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{path}, line {line}: column {key!r} holds {text!r}, not a number") from None


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
