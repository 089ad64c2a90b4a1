"""``python -m ezm_gpu.plot RUN_DIR``: learning curves (evaluation return per task) from a run's CSV."""
from __future__ import annotations

import argparse
import pathlib
from typing import Mapping, Optional

from .metrics import CSV_NAME, read_metrics

__all__ = ["plot_run", "main"]

EVAL_PREFIX = "eval/return/"  # columns "eval/return/<task>" hold evaluation returns


def plot_run(run_dir: pathlib.Path, out: Optional[pathlib.Path] = None,
             success: Optional[Mapping[str, float]] = None) -> pathlib.Path:
    """Plots every ``eval/return/<task>`` column against env steps per task; returns the PNG path.

    Args:
      run_dir: a run directory holding ``metrics.csv``.
      out: PNG path (default ``run_dir/learning_curves.png``).
      success: task -> success bar, drawn as dashed lines (default: ``ezm_gpu.envs.success_bar`` of each task).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = run_dir / CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist: pass a run directory written by ezm_gpu.train")
    rows = read_metrics(csv_path)
    tasks = sorted({k[len(EVAL_PREFIX):] for row in rows for k in row if k.startswith(EVAL_PREFIX)})
    if not tasks:
        raise ValueError(f"{csv_path} has no evaluation columns ({EVAL_PREFIX}<task>) yet")
    if success is None:
        from .envs import SUCCESS_BARS, success_bar

        success = {t: success_bar(t) for t in tasks if t in SUCCESS_BARS or t.split("-", 1)[-1] in SUCCESS_BARS}
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for task in tasks:
        points = [(row["env_steps"], row[EVAL_PREFIX + task]) for row in rows if row.get(EVAL_PREFIX + task) is not None]
        line, = axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
        if success and task in success:
            axis.axhline(success[task], color=line.get_color(), linestyle="--", linewidth=1)
    axis.set_xlabel("env steps per task")
    axis.set_ylabel("evaluation return")
    axis.set_title(run_dir.name)
    axis.grid(alpha=0.3)
    axis.legend()
    out = out or run_dir / "learning_curves.png"
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ezm_gpu.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=pathlib.Path, help="a run directory (holds metrics.csv)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="PNG path")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
