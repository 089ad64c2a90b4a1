"""Evaluation episodes of a model on its tasks, and ``python -m ezm_gpu.evaluate RUN_DIR`` (a run's latest
checkpoint, scored on its tasks)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib

import torch

from . import envs
from .acting import act
from .checkpoint import latest_checkpoint, load_checkpoint
from .collect import step_repeated
from .config import ConfigError, TrainConfig, load_run_config, validate
from .metrics import results_table

__all__ = ["evaluate", "main"]


@torch.no_grad()
def evaluate(model, tasks: list, cfg: TrainConfig, device: torch.device, seed: int) -> dict:
    """``cfg.eval_episodes`` episodes of ``cfg.eval_steps`` steps per task, side by side, with search
    (sampling noise kept, as released); returns task -> mean undiscounted return (until each episode ends)."""
    episode_length, episodes = cfg.eval_steps, cfg.eval_episodes
    # make_set gives each task a contiguous block of worlds: task t owns worlds [t*episodes, (t+1)*episodes)
    world = envs.make_set(tasks, len(tasks) * episodes, device=device, seed=seed,
                          time_limit=episode_length, ignore_termination=False)
    obs = world.reset()
    generator = torch.Generator(device).manual_seed(seed)
    returns = torch.zeros(world.num_envs, device=device)
    running = torch.ones(world.num_envs, dtype=torch.bool, device=device)
    for _ in range(math.ceil(episode_length / cfg.action_repeat)):
        actions = act(model, obs, world.task_ids, cfg.search, generator).actions
        obs, reward, _, info = step_repeated(world, actions, cfg.action_repeat)
        returns += reward * running
        running &= ~info["done"]
    return dict(zip(tasks, returns.view(len(tasks), episodes).mean(1).tolist()))




def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ezm_gpu.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=pathlib.Path, help="a run directory written by ezm_gpu.train")
    parser.add_argument("--steps", type=int, default=None, help="evaluation episode length (default: the run's)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the run's)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    args = parser.parse_args(argv)
    from .trainer import build_model, resolve_device  # (the trainer evaluates with ``evaluate``)

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
