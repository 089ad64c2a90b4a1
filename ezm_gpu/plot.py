"""``python -m ezm_gpu.plot RUN_DIR [RUN_DIR ...]``: learning curves (evaluation return per task) from runs' CSVs.

One panel per task, one line per run (the run directory's name in the legend), the task's bar drawn
dashed; the command also prints, per run and task, the best evaluation and the mean of the last three.
"""
from __future__ import annotations

import argparse
import pathlib
from typing import Mapping, Optional, Sequence

from .metrics import CSV_NAME, read_metrics

__all__ = ["plot_run", "plot_runs", "evaluations", "summary_table", "main"]

EVAL_PREFIX = "eval/return/"  # columns "eval/return/<task>" hold evaluation returns
LAST_EVALUATIONS = 3  # the summary's "last" column: mean of this many final evaluations


def evaluations(run_dir: pathlib.Path) -> dict[str, list[tuple[float, float]]]:
    """task -> [(env steps per task, evaluation return), ...] in logging order, from run_dir/metrics.csv."""
    csv_path = pathlib.Path(run_dir) / CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist: pass a run directory written by ezm_gpu.train")
    rows = read_metrics(csv_path)
    tasks = sorted({k[len(EVAL_PREFIX):] for row in rows for k in row if k.startswith(EVAL_PREFIX)})
    if not tasks:
        raise ValueError(f"{csv_path} has no evaluation columns ({EVAL_PREFIX}<task>) yet")
    return {t: [(row["env_steps"], row[EVAL_PREFIX + t]) for row in rows if row.get(EVAL_PREFIX + t) is not None]
            for t in tasks}


def _default_bars(tasks) -> dict:
    from .envs import success_bar

    bars = {}
    for task in tasks:
        try:
            bars[task] = success_bar(task)
        except ValueError:  # not a task of ours (a renamed column): no bar
            pass
    return bars


def plot_runs(run_dirs: Sequence[pathlib.Path], out: pathlib.Path,
              bars: Optional[Mapping[str, float]] = None) -> pathlib.Path:
    """One panel per task (the union over runs), one line per run; returns the PNG path ``out``.

    Args:
      run_dirs: run directories holding ``metrics.csv``; the legend names each by its directory name.
      out: PNG path.
      bars: task -> return drawn as a dashed line (default: HumanoidBench's success bar of each task).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {pathlib.Path(d).name: evaluations(pathlib.Path(d)) for d in run_dirs}
    tasks = sorted({t for runs in curves.values() for t in runs})
    bars = _default_bars(tasks) if bars is None else bars
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for name, runs in curves.items():
            if task in runs:
                axis.plot([p[0] for p in runs[task]], [p[1] for p in runs[task]], marker="o", markersize=3,
                          label=name)
        if task in bars:
            axis.axhline(bars[task], color="black", linestyle="--", linewidth=1, label=f"bar {bars[task]:g}")
            axis.set_ylim(top=max(axis.get_ylim()[1], 1.05 * bars[task]))  # the bar stays inside the panel
        axis.set_title(task)
        axis.set_xlabel("env steps per task")
        axis.set_ylabel("evaluation return")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return pathlib.Path(out)


def plot_run(run_dir: pathlib.Path, out: Optional[pathlib.Path] = None,
             success: Optional[Mapping[str, float]] = None) -> pathlib.Path:
    """``plot_runs`` of one run; ``out`` defaults to ``run_dir/learning_curves.png``, ``success`` to the
    tasks' success bars."""
    run_dir = pathlib.Path(run_dir)
    return plot_runs([run_dir], out or run_dir / "learning_curves.png", success)


def summary_table(run_dirs: Sequence[pathlib.Path], last: int = LAST_EVALUATIONS) -> str:
    """Per run and task: evaluations, final env steps, best return, and the mean of the ``last`` final ones."""
    lines = [f"{'run':<28} {'task':<22} {'evals':>5} {'steps':>8} {'best':>7} {f'last {last}':>8}"]
    for run_dir in run_dirs:
        for task, points in evaluations(pathlib.Path(run_dir)).items():
            tail = [p[1] for p in points[-last:]]
            lines.append(f"{pathlib.Path(run_dir).name:<28} {task:<22} {len(points):>5} {points[-1][0]:>8.0f} "
                         f"{max(p[1] for p in points):>7.1f} {sum(tail) / len(tail):>8.1f}")
    return "\n".join(lines)


def _bar(text: str) -> tuple[str, float]:
    task, sep, value = text.partition("=")
    try:
        if task and sep:
            return task, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"--bar takes TASK=RETURN (e.g. cartpole-balance=900), got {text!r}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ezm_gpu.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=pathlib.Path, nargs="+", help="run directories (each holds metrics.csv)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="PNG path (default: RUN_DIR/learning_curves.png for one run; required for several)")
    parser.add_argument("--bar", type=_bar, action="append", default=None, metavar="TASK=RETURN",
                        help="a dashed bar per task (repeatable; default: the tasks' success bars)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.run_dirs) > 1:
        parser.error("several runs need --out PNG")
    bars = dict(args.bar) if args.bar else None
    try:
        print(plot_runs(args.run_dirs, args.out or args.run_dirs[0] / "learning_curves.png", bars))
        print(summary_table(args.run_dirs))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
