"""A run directory: prepared (or found, to resume) before any work, and its config.yaml kept current."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Optional

from . import envs
from .checkpoint import CheckpointNotFoundError, latest_checkpoint, sweep_temporaries
from .config import ConfigError, TrainConfig, config_to_yaml

__all__ = ["prepare_run_dir", "run_name", "record_changes"]


def prepare_run_dir(cfg: TrainConfig, tasks: list) -> tuple[pathlib.Path, Optional[pathlib.Path]]:
    """The run directory and the checkpoint to resume from (None for a fresh run), checked before any work.

    A resumed run needs a checkpoint (temporary files of a write that was killed are swept). A fresh run
    gets an empty, writable directory: an existing run there is refused (two runs would share config,
    metrics and checkpoints), as are a file and a place that cannot be written.
    """
    if cfg.resume:
        run_dir = pathlib.Path(cfg.resume)
        try:
            resume_from = latest_checkpoint(run_dir / "checkpoints")
        except CheckpointNotFoundError:
            resume_from = None
        if resume_from is None:
            raise ConfigError(f"invalid resume={cfg.resume!r}: it holds no checkpoint (checkpoints/checkpoint_*.pt); "
                              "check the path, or start a fresh run with out=")
        sweep_temporaries(run_dir / "checkpoints")
        return run_dir, resume_from
    run_dir = pathlib.Path(cfg.out or f"runs/{run_name(tasks)}-{time.strftime('%Y%m%d-%H%M%S')}")
    where = f"invalid out={str(cfg.out or run_dir)!r}:"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{where} {run_dir} is a file; give a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        held = ", ".join(sorted(entry.name for entry in run_dir.iterdir())[:4])
        raise ConfigError(f"{where} {run_dir} is not empty (it holds {held}); continue that run with "
                          f"`python -m ezm_gpu.train resume={run_dir}`, or choose another out=")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{where} cannot write a run directory there ({error.strerror or error})") from None
    return run_dir, None


def run_name(tasks: list) -> str:
    for name, members in envs.TASK_SETS.items():
        if list(members) == list(tasks):
            return name
    return "-".join(tasks) if len(tasks) < 3 else f"{len(tasks)}tasks"


def record_changes(run_dir: pathlib.Path, saved: TrainConfig, cfg: TrainConfig) -> None:
    """Writes a resumed run's changed keys into its config.yaml (atomically) and says what changed."""
    changed = {f.name: (getattr(saved, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
               if f.name != "resume" and getattr(saved, f.name) != getattr(cfg, f.name)}
    if not changed:
        return
    path = run_dir / "config.yaml"
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(config_to_yaml(dataclasses.replace(cfg, resume=None)))
    os.replace(tmp, path)
    print("resumed with " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()) + f" (recorded in {path})")
