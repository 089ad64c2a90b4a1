"""``python -m ezm_gpu.evaluate RUN_DIR``: evaluates a run's latest checkpoint on its tasks."""
from __future__ import annotations

import argparse
import dataclasses
import pathlib

from . import envs
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import ConfigError, validate
from .metrics import results_table
from .train import build_model, evaluate, load_run_config, resolve_device

__all__ = ["main"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ezm_gpu.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=pathlib.Path, help="a run directory written by ezm_gpu.train")
    parser.add_argument("--steps", type=int, default=None, help="evaluation episode length (default: the run's)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the run's)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.run_dir)
        if args.steps is not None:
            if args.steps < 1:
                raise ConfigError(f"invalid --steps={args.steps}: an integer >= 1")
            cfg = dataclasses.replace(cfg, eval_steps=args.steps)
        if args.episodes is not None:
            if args.episodes < 1:
                raise ConfigError(f"invalid --episodes={args.episodes}: an integer >= 1")
            cfg = dataclasses.replace(cfg, eval_episodes=args.episodes)
        folder = args.run_dir / "checkpoints"
        path = latest_checkpoint(folder) if folder.is_dir() else None
        if path is None:
            raise ConfigError(f"{args.run_dir} has no checkpoint yet (a run writes one every checkpoint_interval "
                              "updates and when it stops); evaluate it once one is written")
    except (ConfigError, FileNotFoundError) as error:
        parser.error(str(error))
    device = resolve_device(cfg.device)
    envs.silence_warp()  # no per-module load lines around the results table
    names = validate(cfg)  # a set name or a list, resolved the way training resolved it
    tasks = envs.make_set(names, len(names), device=device)
    model = build_model(cfg, tasks, device)
    # Mapped, not read: only the EMA weights' bytes are read (and copied to the device), never the replay.
    model.load_state_dict(load_checkpoint(path, map_location="cpu", mmap=True)["learner"]["ema"]["copy"])
    scores = evaluate(model.eval(), tasks.tasks, cfg, device, args.seed)
    print(results_table(scores))
    return scores


if __name__ == "__main__":
    main()
