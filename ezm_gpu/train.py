"""``python -m ezm_gpu.train envs=4096``: EZ-M on a task set, entirely on the available device.

A run directory holds ``config.yaml``, ``metrics.csv``, TensorBoard events, ``checkpoints/`` and the
learning-curve PNG; ``resume=RUN_DIR`` continues from its latest checkpoint. The run itself is a
``trainer.Trainer``; the command line (composition of configs/, ``--help``) is ``cli``.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Optional

from . import envs
from .checkpoint import CheckpointError
from .cli import CONFIG_GROUPS, compose_config, config_group_options, resume_changes, usage
from .collect import step_repeated
from .config import ConfigError, TrainConfig, load_run_config
from .distributed import World
from .curriculum import push_recent_returns, saturated_tasks
from .evaluate import evaluate
from .plan import UpdatePlan, plan_updates
from .trainer import (KEEP_CHECKPOINTS, RESUME_CHANGES, RunInterrupted, Trainer, TrainingDiverged, build_model,
                      resolve_device)

__all__ = ["run", "main", "Trainer", "evaluate", "step_repeated", "push_recent_returns", "saturated_tasks",
           "compose_config", "config_group_options", "CONFIG_GROUPS", "RESUME_CHANGES", "resolve_device",
           "build_model", "load_run_config", "TrainingDiverged", "RunInterrupted", "KEEP_CHECKPOINTS", "UpdatePlan",
           "plan_updates", "usage"]


def run(cfg: TrainConfig, changes: Optional[dict] = None, ranks: Optional[World] = None) -> pathlib.Path:
    """Trains per ``cfg`` (``Trainer``); returns the run directory. Raises ConfigError before any work on a bad
    value, RunInterrupted after the checkpoint a SIGINT/SIGTERM asked for. ``ranks``: the data-parallel world
    (default: torchrun's environment, a world of one without it)."""
    return Trainer(cfg, changes, World.from_env() if ranks is None else ranks).run()


def main(argv: Optional[list] = None) -> None:
    """Hydra entry point: ``python -m ezm_gpu.train key=value group=option ...`` (configs/train.yaml)."""
    from hydra.errors import HydraException

    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "help") for arg in overrides):
        print(usage())
        return
    try:
        changes = resume_changes(overrides)
        cfg = compose_config(overrides if changes is None else
                             [o for o in overrides if o.partition("=")[0].lstrip("+~") == "resume"])
    except (ConfigError, HydraException) as error:  # e.g. a key that does not exist
        raise SystemExit(f"ezm_gpu.train: {error}")
    try:
        run_dir = run(cfg, changes)
        if World.from_env().main:
            print(f"run directory: {run_dir}")
    except RunInterrupted as stopped:
        print(f"ezm_gpu.train: {stopped}", file=sys.stderr)
        raise SystemExit(stopped.exit_code)
    except (ConfigError, CheckpointError, envs.AssetsNotFoundError, TrainingDiverged) as error:
        raise SystemExit(f"ezm_gpu.train: {error}")


if __name__ == "__main__":
    main()
