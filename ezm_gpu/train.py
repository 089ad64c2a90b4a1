"""``python -m ezm_gpu.train envs=4096``: EZ-M on a task set, entirely on the available device.

The loop, top to bottom: batched search over all worlds → env step → replay insert → the updates due
by the run's plan (``plan_updates``: a fixed number per env step per task, whatever the number of worlds;
reanalysis + loss + Adam, learner.py) → EMA → periodic evaluation, logs, checkpoints; after the last
decision, the final updates. A run directory holds ``config.yaml``, ``metrics.csv``, TensorBoard events,
``checkpoints/`` and the learning-curve PNG; ``resume=RUN_DIR`` continues from its latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import signal
import sys
import time
from typing import Optional

import torch

from . import envs
from .acting import act
from .checkpoint import CheckpointError, CheckpointNotFoundError, capture_rng_state, checkpoint_path, \
    latest_checkpoint, load_checkpoint, restore_rng_state, rotate_checkpoints, sweep_temporaries, \
    save_checkpoint
from .config import ConfigError, SearchSettings, TrainConfig, model_config, validate
from .kernels import SearchConfig
from .learner import Learner, LearnerConfig
from .metrics import MetricsLogger, results_table
from .plot import plot_run
from .model import EZMModel
from .replay import ReplayBuffer, ReplayConfig

__all__ = ["run", "evaluate", "step_repeated", "main", "push_recent_returns", "saturated_tasks", "compose_config", "config_group_options", "CONFIG_GROUPS", "resolve_device", "build_model", "load_run_config", "TrainingDiverged", "RunInterrupted", "KEEP_CHECKPOINTS", "UpdatePlan", "plan_updates"]

KEEP_CHECKPOINTS = 3  # newest checkpoints kept in run_dir/checkpoints


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run after a checkpoint; ``python -m ezm_gpu.train resume=DIR`` continues it."""

    def __init__(self, signum: int, updates: int, run_dir: pathlib.Path):
        self.signum, self.updates, self.run_dir = int(signum), int(updates), run_dir
        super().__init__(f"interrupted ({signal.Signals(signum).name}) at update {updates}; resume with: "
                         f"python -m ezm_gpu.train resume={run_dir}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" -> the current CUDA device with its index (the
    form tensors report, see ``envs.canonical_device``); "cuda[:N]" without that GPU is a ConfigError."""
    try:
        return envs.canonical_device(None if name == "auto" else name)
    except ValueError as error:
        raise ConfigError(f"invalid device={name!r}: {error} (use device=cpu or auto)") from None


def _search(settings: SearchSettings) -> SearchConfig:
    return SearchConfig(num_simulations=settings.num_simulations, num_top_actions=settings.num_root_actions,
                        num_child_actions=settings.num_child_actions, discount=settings.discount)


def _search_kwargs(settings: SearchSettings) -> dict:
    return dict(num_root=settings.num_root_actions, root_wide=settings.root_wide, child_wide=settings.child_wide)


@torch.no_grad()
def evaluate(model: EZMModel, tasks: list, cfg: TrainConfig, device: torch.device, seed: int) -> dict:
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
    search, search_kwargs = _search(cfg.search), _search_kwargs(cfg.search)
    for _ in range(math.ceil(episode_length / cfg.action_repeat)):
        actions = act(model, obs, world.task_ids, search, generator, **search_kwargs).actions
        obs, reward, _, info = step_repeated(world, actions, cfg.action_repeat)
        returns += reward * running
        running &= ~info["done"]
    return dict(zip(tasks, returns.view(len(tasks), episodes).mean(1).tolist()))


def step_repeated(world, actions: torch.Tensor, repeat: int) -> tuple:
    """``repeat`` env steps with the same actions [W, A]: one agent decision (action repeat).

    Returns (next_obs [W, obs], reward [W] summed over the steps until the world's episode ended,
    terminated [W], info) with info["done"] [W] (the episode ended during the decision),
    info["final_observation"] [W, obs] (of the first ended episode) and info["episode_return"] [W] (its
    return). A world whose episode ends before the last repeat is auto-reset by the env and takes the
    remaining repeats in its new episode (fixed shapes, no host read); with time limits that are multiples
    of ``repeat`` and no terminations, episodes end exactly on decision boundaries. ``repeat=1`` is a plain
    ``world.step``.
    """
    next_obs, reward, terminated, _, info = world.step(actions, validate=False)
    if repeat == 1:
        return next_obs, reward, terminated, info
    total, done = reward.clone(), info["done"].clone()
    final, episode_return = info["final_observation"].clone(), info["episode_return"].clone()
    for _ in range(repeat - 1):
        next_obs, reward, step_terminated, _, info = world.step(actions, validate=False)
        first = info["done"] & ~done  # this step ended an episode that had not ended yet in this decision
        total += reward * ~done
        terminated = terminated | (step_terminated & ~done)
        final = torch.where(first[:, None], info["final_observation"], final)
        episode_return = torch.where(first, info["episode_return"], episode_return)
        done |= info["done"]
    return next_obs, total, terminated, {"done": done, "final_observation": final, "episode_return": episode_return}


@dataclasses.dataclass(frozen=True)
class UpdatePlan:
    """How many updates a run makes and when (``plan_updates``); every count is exact."""

    decisions: int  # agent decisions of the run (one step of every world, x action_repeat env steps each)
    random_decisions: int  # warm-up decisions: uniform-random actions and no updates (start_transitions)
    collection: int  # updates spread evenly over the decisions after the warm-up
    final: int  # updates after the last decision

    @property
    def total(self) -> int:
        """Every update of the run (the learning-rate decay is placed at 90% of it)."""
        return self.collection + self.final

    def due(self, decisions: int) -> int:
        """Collection updates that have run once ``decisions`` decisions are taken: after the j-th decision
        past the warm-up, ``floor(collection * j / learning decisions)`` (all of them at the last decision
        when the warm-up fills the run). The final updates come on top, after the last decision."""
        learning = self.decisions - self.random_decisions
        if learning == 0:
            return self.collection if decisions >= self.decisions else 0
        return self.collection * min(max(decisions - self.random_decisions, 0), learning) // learning


def plan_updates(cfg: TrainConfig, per_task_worlds: int) -> UpdatePlan:
    """The updates of a run: ``round(updates_per_step * steps)`` while collecting, then
    ``round(final_updates * that)`` at the end.

    The count depends on the env steps per task (``steps``), not on the number of worlds: more worlds
    per task (``per_task_worlds``, the smallest task's share of ``envs``) take the same env steps in
    fewer decisions, with more updates after each. Release (spec/ezm.md): medium 0.6 x 1M = 6e5 and hard
    0.3 x 2M = 6e5, each + 2e4 (final_updates 1/30).
    """
    decisions = math.ceil(cfg.steps / (per_task_worlds * cfg.action_repeat))
    random_decisions = min(decisions, math.ceil(cfg.start_transitions / per_task_worlds))
    collection = round(cfg.updates_per_step * cfg.steps)
    return UpdatePlan(decisions=decisions, random_decisions=random_decisions, collection=collection,
                      final=round(cfg.final_updates * collection))


def run(cfg: TrainConfig, changes: Optional[dict] = None) -> pathlib.Path:
    """Trains per ``cfg``; returns the run directory. Raises ConfigError before any work on a bad value.

    With ``cfg.resume`` set, the run directory's own ``config.yaml`` is the configuration (every other
    field of ``cfg`` is ignored) and training continues from its latest checkpoint; ``changes`` ({key:
    value}, keys of ``RESUME_CHANGES`` only, e.g. a larger ``steps`` to extend the run) are applied and
    recorded in its config.yaml. Raises RunInterrupted after the checkpoint a SIGINT/SIGTERM asked for.
    """
    saved_cfg = None
    if cfg.resume:  # continue with the run's own configuration (only `resume` and `changes` may differ)
        saved_cfg = load_run_config(pathlib.Path(cfg.resume))
        fixed = sorted(set(changes or {}) - set(RESUME_CHANGES))
        if fixed:
            raise ConfigError(f"a resumed run may change {', '.join(RESUME_CHANGES)} only, not {', '.join(fixed)}")
        cfg = dataclasses.replace(saved_cfg, resume=cfg.resume, **(changes or {}))
    tasks = validate(cfg)
    device = resolve_device(cfg.device)

    envs.silence_warp()  # kernel-load lines would drown the progress bar
    run_dir, resume_from = _prepare_run_dir(cfg, tasks)
    if cfg.device == "auto" and device.type == "cpu":
        print(cpu_notice(cfg, tasks), file=sys.stderr)
    num_tasks = len(tasks)
    torch.manual_seed(cfg.seed)

    # The task set, the model, the learner and the replay.
    world = envs.make_set(tasks, cfg.envs, device=device, seed=cfg.seed, time_limit=cfg.episode_length,
                          ignore_termination=cfg.ignore_termination)
    per_task_worlds = [s.stop - s.start for s in world.slices]
    task_mask = torch.nn.functional.one_hot(world.task_ids, num_tasks).float()  # [W, T]
    model = build_model(cfg, world, device)
    plan = plan_updates(cfg, min(per_task_worlds))
    iterations = plan.decisions  # agent decisions
    search, search_kwargs = _search(cfg.search), _search_kwargs(cfg.search)
    learner = Learner(model, LearnerConfig(lr=cfg.lr, discount=cfg.search.discount, ema_tau=cfg.ema_tau,
                                           ema_interval=cfg.ema_interval, td_steps=cfg.td_steps,
                                           autocast_dtype=_autocast_dtype(cfg.precision, device),
                                           total_updates=max(1, plan.total)),
                      search, search_kwargs)
    # A resumed run reads its checkpoint once, mapped (only the bytes used are read, into host memory), and
    # keeps the replay size it was saved with; a new run sizes the replay to what it can fill.
    loaded = None if resume_from is None else load_checkpoint(resume_from, map_location="cpu", mmap=True)
    capacity = (loaded["replay"]["config"]["capacity"] if loaded is not None and "replay" in loaded else
                min(cfg.replay_capacity, replay_rows(cfg, plan, max(per_task_worlds))))
    replay = ReplayBuffer(ReplayConfig(num_tasks=num_tasks, capacity=capacity, obs_dim=world.obs_dim,
                                       action_dim=world.action_dim, num_worlds=cfg.envs, td_steps=cfg.td_steps,
                                       batch_size=cfg.batch_size // num_tasks * num_tasks), device=device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    # Decisions taken and updates made: the plan's schedule is a function of the decisions, so these two
    # place a resumed run exactly (mid-decision, or in the final updates after the last decision).
    counters = {"iteration": 0, "updates": 0}
    # The first non-finite loss (update number, value), kept on the device and read only when a log,
    # evaluation or checkpoint is due: no host sync per update, and never a checkpoint after a NaN.
    divergence = {"update": torch.zeros((), dtype=torch.long, device=device),
                  "loss": torch.zeros((), device=device)}
    # Staggered starts: with hundreds of worlds per task, episodes would otherwise come in a few synchronised
    # waves (the release's 16 envs per task see theirs spread in time). Credits are whole decisions.
    obs = world.reset(stagger=cfg.stagger_resets, stagger_multiple=cfg.action_repeat)
    if resume_from is not None:
        counters, obs, resumed_returns = _restore(loaded, learner, replay, world, generator, counters, device)
        del loaded  # the loaded state is released: the device never holds a second replay
        if counters["iteration"] > iterations:
            raise ConfigError(f"invalid steps={cfg.steps}: the run has taken "
                              f"{_env_steps_per_task(cfg, counters, world)} env steps per task already; give at least that")
        _record_changes(run_dir, saved_cfg, cfg)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(_to_yaml(cfg))
    # A resumed run drops rows logged after its checkpoint (a kill between the two would repeat them).
    metrics = MetricsLogger(run_dir, resume_at=None if resume_from is None else
                            (counters["updates"], _env_steps_per_task(cfg, counters, world)))

    def checkpoint() -> None:
        folder = run_dir / "checkpoints"
        state = {"learner": learner.state_dict(), "envs": world.state_dict(), "rng": capture_rng_state([generator]),
                 "counters": dict(counters), "obs": obs, "returns": {k: v.clone() for k, v in returns.items()}}
        if cfg.checkpoint_replay:
            state["replay"] = replay.checkpoint_state()  # the rows written so far, not the whole buffer
        rotate_checkpoints(folder, save_checkpoint(checkpoint_path(folder, counters["updates"]), state),
                           KEEP_CHECKPOINTS)

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the current update or decision, checkpoint, exit
        if stop["signal"] is not None:  # a second signal: end now (the last checkpoint on disk is intact)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    returns = {"sum": torch.zeros(num_tasks, device=device), "count": torch.zeros(num_tasks, device=device),
               "recent": torch.zeros(num_tasks, SATURATION_WINDOW, device=device),  # last finished returns
               "recent_count": torch.zeros(num_tasks, dtype=torch.long, device=device),
               # worlds still in a staggered (shortened) first episode: its return is no score
               "partial": torch.full((cfg.envs,), cfg.stagger_resets, dtype=torch.bool, device=device)}
    if resume_from is not None:
        returns.update(resumed_returns)  # (runs checkpointed before the saturation rings start them fresh)
    # The bar counts decisions and updates alike: after the warm-up their mix is fixed by the plan, so the
    # rate, and the ETA, are steady; and it moves during the updates of a decision, however many.
    progress = _Progress(iterations + plan.total, counters["iteration"] + counters["updates"])
    progress.rates(counters["iteration"] * cfg.envs * cfg.action_repeat, counters["updates"])  # starts the clock

    def update_until(target: int) -> None:  # updates until counters["updates"] == target or a signal
        while counters["updates"] < target and stop["signal"] is None:
            terms = learner.update(replay, generator)
            counters["updates"] += 1
            progress.update(1)
            _record_divergence(divergence, terms["loss"], counters["updates"])
            if _due(cfg, counters["updates"]):
                _raise_if_diverged(divergence, run_dir)
                _periodic(cfg, counters, terms, returns, metrics, learner, tasks, device, world, checkpoint, progress)

    try:
        while stop["signal"] is None:
            update_until(plan.due(counters["iteration"]))  # (first catches up a checkpoint taken mid-decision)
            if counters["iteration"] == iterations or stop["signal"] is not None:
                break
            collected = counters["iteration"] * min(per_task_worlds)  # transitions per task
            acting_random = collected < cfg.start_transitions  # same count for every task: host-known
            out = act(learner.ema.copy, obs, world.task_ids, search, generator, random=acting_random,
                      **search_kwargs)
            next_obs, reward, terminated, info = step_repeated(world, out.actions, cfg.action_repeat)
            replay.add(world.task_ids, obs, out.actions, reward, info["done"], info["final_observation"],
                       terminated, validate=False)
            finished = info["done"] & ~returns["partial"]  # full episodes: their returns count
            returns["partial"] &= ~info["done"]
            # Per-task sums as reductions over a [W, T] mask: a fixed order on every device (index_add_ on
            # CUDA adds with atomics, in an order that changes from run to run).
            returns["sum"] += (task_mask * (info["episode_return"] * finished)[:, None]).sum(0)
            returns["count"] += (task_mask * finished[:, None]).sum(0)
            push_recent_returns(returns["recent"], returns["recent_count"], world.task_ids, finished,
                                info["episode_return"])
            obs = next_obs
            counters["iteration"] += 1
            if counters["iteration"] == int(0.4 * iterations):  # episode-length curriculum (release)
                world.set_time_limit(max(cfg.episode_length, 1000))
            progress.update(1)
        if counters["iteration"] == iterations and counters["updates"] < plan.total and stop["signal"] is None:
            progress.describe(f"final updates ({plan.final})")
            update_until(plan.total)  # the final updates, after collection (release: 2e4 after 6e5)
        world.check()
        _raise_if_diverged(divergence, run_dir)
        checkpoint()
    finally:
        progress.close()
        metrics.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop["signal"] is not None:
        raise RunInterrupted(stop["signal"], counters["updates"], run_dir)
    scores = evaluate(learner.ema.copy, tasks, cfg, device, cfg.seed + 1)
    metrics = MetricsLogger(run_dir)
    metrics.log(counters["updates"], _env_steps_per_task(cfg, counters, world),
                {f"eval/return/{t}": v for t, v in scores.items()})
    metrics.close()
    print(results_table(scores))
    try:
        plot_run(run_dir)  # run_dir/learning_curves.png
    except (OSError, ValueError) as error:  # the run itself is complete: say why the picture is missing
        print(f"ezm_gpu.train: learning_curves.png not written ({error})", file=sys.stderr)
    return run_dir


def _record_changes(run_dir: pathlib.Path, saved: TrainConfig, cfg: TrainConfig) -> None:
    """Writes a resumed run's changed keys into its config.yaml (atomically) and says what changed."""
    changed = {f.name: (getattr(saved, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
               if f.name != "resume" and getattr(saved, f.name) != getattr(cfg, f.name)}
    if not changed:
        return
    path = run_dir / "config.yaml"
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(_to_yaml(dataclasses.replace(cfg, resume=None)))
    os.replace(tmp, path)
    print("resumed with " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()) + f" (recorded in {path})")


def replay_rows(cfg: TrainConfig, plan: "UpdatePlan", worlds_per_task: int) -> int:
    """Rows per task a run can write: each world's transition of every decision and the final observation
    of each episode it ends (episodes last at least ``episode_length`` env steps unless terminations count)."""
    episodes = plan.decisions if not cfg.ignore_termination else \
        math.ceil(plan.decisions * cfg.action_repeat / cfg.episode_length) + 1  # +1: a staggered first episode
    return worlds_per_task * (plan.decisions + episodes)


def _restore(state: dict, learner: Learner, replay: ReplayBuffer, world, generator: torch.Generator,
             counters: dict, device: torch.device) -> tuple[dict, torch.Tensor, dict]:
    """Copies a loaded checkpoint (host memory) into the run's own (device) tensors; returns (counters, obs,
    returns). Nothing returned refers to ``state``, so the caller can release it (2.75 GB of replay for
    the medium set at envs=4096, 13.7 GB hard)."""
    learner.load_state_dict(state["learner"])
    if "replay" in state:  # absent when the run checkpoints without it (checkpoint_replay=false)
        replay.load_state_dict(state["replay"])
    world.load_state_dict(state["envs"])
    restore_rng_state(state["rng"], [generator])
    counters = {key: int(state["counters"][key]) for key in counters}  # (drops older runs' "debt")
    returns = {key: value.to(device) for key, value in state["returns"].items()}
    return counters, state["obs"].to(device), returns


def build_model(cfg: TrainConfig, world, device: torch.device) -> EZMModel:
    """The preset's model (with ``cfg.model``'s fields) sized for a task set (padded obs/action dims, one
    action mask per task)."""
    masks = torch.stack([world.action_mask[s.start] for s in world.slices]).float()
    config = model_config(cfg, obs_dim=world.obs_dim, action_dim=world.action_dim, num_tasks=len(world.tasks))
    return EZMModel(config, action_masks=masks).to(device)


SATURATION_WINDOW = 10  # the release's curriculum looks at each task's last 10 training returns


def push_recent_returns(recent: torch.Tensor, recent_count: torch.Tensor, task_ids: torch.Tensor,
                        done: torch.Tensor, episode_return: torch.Tensor) -> None:
    """Appends finished episodes' returns to per-task rings, in place and on device (no host read).

    recent [T, R] ring of each task's last R returns (slot ``count % R`` is next); recent_count [T] int64
    returns pushed so far; task_ids [W] (worlds grouped by task, as in a TaskSet); done [W] bool;
    episode_return [W]. When more than R worlds of a task finish at once, its last R (by world) are kept.
    """
    tasks, window = recent.shape
    done = done.bool()
    one_hot = torch.nn.functional.one_hot(task_ids.long(), tasks).bool() & done[:, None]  # [W, T]
    rank = (one_hot.long().cumsum(0) - 1).gather(1, task_ids.long()[:, None])[:, 0]  # among the task's done
    finished = one_hot.sum(0)  # [T]
    keep = done & (rank >= finished[task_ids.long()] - window)
    slot = (recent_count[task_ids.long()] + rank) % window
    flat = torch.where(keep, task_ids.long() * window + slot, tasks * window)  # dropped rows -> a spare slot
    spare = torch.cat([recent.reshape(-1), recent.new_zeros(1)])
    spare.scatter_(0, flat, torch.where(keep, episode_return.to(recent.dtype), 0.0))
    recent.copy_(spare[:-1].view(tasks, window))
    recent_count.add_(finished)


def saturated_tasks(recent: torch.Tensor, recent_count: torch.Tensor) -> list[int]:
    """Task indices whose last R returns have saturated (release: ``max - min < 0.1 max`` and ``min > 60``).

    Reads the rings on the host: call it where a log is written anyway.
    """
    full = recent_count >= recent.shape[1]
    high, low = recent.amax(1), recent.amin(1)
    return [i for i, hit in enumerate((full & (high - low < 0.1 * high) & (low > 60)).tolist()) if hit]


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# Measured on a 2-core CPU (benchmarks/README.md): h1 physics at 1024 worlds, and one update with EZ-M's
# reanalysis search at batch ~512 per model preset (medium has hard's 16M parameters).
CPU_ENV_STEPS_PER_S = 594.0
CPU_SECONDS_PER_UPDATE = {"cpu": 1.25, "medium": 21.7, "hard": 21.7}
CPU_COMMAND = ("python -m ezm_gpu.train task_set=cartpole preset=cpu search=small device=cpu envs=64 "
               "batch_size=128 action_repeat=2")  # the README's CPU learning check (its full command there)


def cpu_notice(cfg: TrainConfig, tasks: list) -> str:
    """What ``device=auto`` falling back to the CPU means for this configuration, in one notice."""
    plan = plan_updates(cfg, cfg.envs // len(tasks))
    per_update = CPU_SECONDS_PER_UPDATE[cfg.preset] * cfg.batch_size / 512
    days = (len(tasks) * cfg.steps / CPU_ENV_STEPS_PER_S + plan.total * per_update) / 86400
    return (f"ezm_gpu.train: no CUDA device, running on the CPU. This configuration ({len(tasks)} tasks x "
            f"{cfg.steps:,} env steps, {plan.total:,} updates of batch {cfg.batch_size}, preset {cfg.preset}) would "
            f"take about {days:,.1f} days here ({CPU_ENV_STEPS_PER_S:.0f} env steps/s and {per_update:.2f} s per "
            f"update, measured on a 2-core CPU). A run sized for a CPU: {CPU_COMMAND} (README, Learning check).")


def _prepare_run_dir(cfg: TrainConfig, tasks: list) -> tuple[pathlib.Path, Optional[pathlib.Path]]:
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
    run_dir = pathlib.Path(cfg.out or f"runs/{_run_name(tasks)}-{time.strftime('%Y%m%d-%H%M%S')}")
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


def _run_name(tasks: list) -> str:
    for name, members in envs.TASK_SETS.items():
        if list(members) == list(tasks):
            return name
    return "-".join(tasks) if len(tasks) < 3 else f"{len(tasks)}tasks"


def _record_divergence(divergence: dict, loss: torch.Tensor, update: int) -> None:
    first = (divergence["update"] == 0) & ~torch.isfinite(loss)
    divergence["update"] = torch.where(first, update, divergence["update"])
    divergence["loss"] = torch.where(first, loss.detach(), divergence["loss"])


def _raise_if_diverged(divergence: dict, run_dir: pathlib.Path) -> None:
    update = int(divergence["update"])  # host read: only when a log, evaluation or checkpoint is due
    if update:
        raise TrainingDiverged(
            f"loss became {float(divergence['loss'])} at update {update}; the last good checkpoint in "
            f"{run_dir / 'checkpoints'} is intact (lower the learning rate or check the observations)")


def _env_steps_per_task(cfg: TrainConfig, counters: dict, world) -> int:
    """Env steps each task has taken: decisions x its worlds (the smallest task's share) x action repeat."""
    return counters["iteration"] * min(s.stop - s.start for s in world.slices) * cfg.action_repeat


def _due(cfg: TrainConfig, updates: int) -> bool:
    return any(updates % interval == 0 for interval in (cfg.log_interval, cfg.eval_interval, cfg.checkpoint_interval))


def load_run_config(run_dir: pathlib.Path) -> TrainConfig:
    """The TrainConfig a run was started with (run_dir/config.yaml).

    A config written before ``updates_per_step`` replaced ``replay_ratio`` (sampled transitions per env
    step, i.e. ``envs * replay_ratio / batch_size`` updates per decision after the warm-up) is read with the
    ``updates_per_step`` that makes the same number of collection updates and ``final_updates: 0``, so such
    a run evaluates and resumes with the updates it was making (on resume, the learning-rate decay moves to
    90% of that count: the former planned count also counted the warm-up's decisions).
    """
    from omegaconf import OmegaConf

    path = pathlib.Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass a run directory written by ezm_gpu.train")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if "replay_ratio" in values:
        values = _from_replay_ratio(values)
    return _from_dict(values)


def _from_replay_ratio(values: dict) -> dict:
    """A legacy run config's ``replay_ratio`` as the equivalent ``updates_per_step`` (and no final updates)."""
    values = dict(values)
    ratio = values.pop("replay_ratio")
    cfg = _from_dict({**values, "updates_per_step": 1.0, "final_updates": 0.0})
    tasks = validate(cfg)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < float("inf"):
        raise ConfigError(f"invalid replay_ratio={ratio!r} (a legacy run config): a finite number > 0")
    plan = plan_updates(cfg, cfg.envs // len(tasks))
    learning = plan.decisions - plan.random_decisions
    collection = math.floor(learning * cfg.envs * ratio / cfg.batch_size + 1e-6)  # what the old loop made
    return {**values, "updates_per_step": max(collection, 1) / cfg.steps, "final_updates": 0.0}


def _periodic(cfg, counters, terms, returns, metrics, learner, tasks, device, world, checkpoint, progress) -> None:
    """Logs, evaluations and checkpoints on their update intervals (host reads happen only here)."""
    updates = counters["updates"]
    env_steps = _env_steps_per_task(cfg, counters, world)
    if updates % cfg.log_interval == 0:
        row = {f"train/{k}": float(v) for k, v in terms.items()}
        finished = returns["count"].clamp(min=1)
        for task, mean, count in zip(tasks, (returns["sum"] / finished).tolist(), returns["count"].tolist()):
            if count:
                row[f"episode/return/{task}"] = mean
        returns["sum"].zero_()
        returns["count"].zero_()
        for task in saturated_tasks(returns["recent"], returns["recent_count"]):  # the release's early switch
            if world.time_limits[task] < 1000:
                world.set_time_limit(max(cfg.episode_length, 1000), task)
        row.update(progress.rates(counters["iteration"] * cfg.envs * cfg.action_repeat, updates))
        metrics.log(updates, env_steps, row)
        progress.show(row, tasks)
    if updates % cfg.eval_interval == 0:
        scores = evaluate(learner.ema.copy, tasks, cfg, device, cfg.seed + updates)
        metrics.log(updates, env_steps, {f"eval/return/{t}": v for t, v in scores.items()})
        progress.restart_clock()  # the evaluation's time is not training throughput
    if updates % cfg.checkpoint_interval == 0:
        checkpoint()


class _Progress:
    """The progress bar (tqdm over iterations = one env step of every world) with throughput and returns.

    ``rates`` gives env steps/s (all worlds) and updates/s since the previous log row (wall clock, host
    side: on CUDA the log's own reads have just synchronised) and the wall time since training started
    in this process.
    """

    def __init__(self, total: int, initial: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, desc="decisions + updates")
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


def _to_yaml(cfg: TrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _from_dict(values: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: {', '.join(sorted(known))}")
    values = dict(values)
    if isinstance(values.get("search"), dict):
        search_known = {f.name for f in dataclasses.fields(SearchSettings)}
        bad = sorted(set(values["search"]) - search_known)
        if bad:
            raise ConfigError(f"unknown keys {['search.' + b for b in bad]}; known: {sorted(search_known)}")
        values["search"] = SearchSettings(**values["search"])
    return TrainConfig(**values)


CONFIG_GROUPS = ("task_set", "preset", "search")  # configs/<group>/<option>.yaml


def config_group_options(group: str) -> list[str]:
    """The options of a config group (``configs/<group>/*.yaml``), sorted."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("ezm_gpu.configs").joinpath(group).iterdir()
                  if p.name.endswith(".yaml"))


def _check_group_choices(overrides: list) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "replay_ratio":
            raise ConfigError("replay_ratio was replaced by updates_per_step (updates per env step per task while "
                              "collecting; the task set's budget) and final_updates (updates after collection, "
                              "as a fraction of those)")
        if key in CONFIG_GROUPS and value not in config_group_options(key):
            raise ConfigError(f"invalid {key}={value!r}: one of {', '.join(config_group_options(key))} "
                              f"(configs/{key}/*.yaml)")


def compose_config(overrides: list) -> TrainConfig:
    """``configs/train.yaml`` with its groups and ``key=value`` overrides, as a TrainConfig (not yet validated)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    _check_group_choices(overrides)
    with initialize_config_module(config_module="ezm_gpu.configs", version_base=None):
        composed = compose(config_name="train", overrides=overrides)
    return _from_dict(OmegaConf.to_container(composed, resolve=True))


RESUME_CHANGES = ("steps", "eval_interval", "eval_steps", "eval_episodes", "checkpoint_interval", "log_interval",
                  "checkpoint_replay")  # keys a resumed run may change (extend it, log or save differently)


def _resume_changes(overrides: list) -> Optional[dict]:
    """For ``resume=RUN_DIR key=value ...``: the changes to the run's own config, {key: value}; None when not
    resuming. Only ``RESUME_CHANGES`` may change; any other key is refused, with the run's value beside it."""
    import yaml

    keys = [override.partition("=")[0].lstrip("+~") for override in overrides]
    target = next((o.partition("=")[2] for k, o in zip(keys, overrides) if k == "resume"), None)
    if target in (None, "", "null"):
        return None
    changes = {k: yaml.safe_load(o.partition("=")[2]) for k, o in zip(keys, overrides) if k != "resume"}
    fixed = [(k, o) for k, o in zip(keys, overrides) if k != "resume" and k not in RESUME_CHANGES]
    if fixed:
        try:
            saved = dataclasses.asdict(load_run_config(pathlib.Path(target)))
        except ConfigError:  # no run there: the resume itself will say so
            saved = {}
        listed = ", ".join(o + (f" (the run's: {saved[k]})" if k in saved else "") for k, o in fixed)
        raise ConfigError(f"resume continues the run's own config (its config.yaml); only "
                          f"{', '.join(RESUME_CHANGES)} may change, but these keys were given: {listed} (start a "
                          "new run with out=... to change them)")
    return changes


def usage() -> str:
    """``python -m ezm_gpu.train --help``: every top-level key with its default and meaning (from
    configs/train.yaml, the one place they are defined), the config groups and their options, examples."""
    import re
    from importlib import resources

    text = resources.files("ezm_gpu.configs").joinpath("train.yaml").read_text()
    keys = [match.groups() for match in re.finditer(r"^(\w+):[ \t]*([^#\n]*?)[ \t]*#[ \t]*(.*)$", text, re.M)]
    hidden = re.findall(r"^# (\w+): set by task_set", text, re.M)
    width = max(len(f"{key}={value}") for key, value, _ in keys)
    lines = ["usage: python -m ezm_gpu.train [key=value ...] [group=option ...]", "",
             "Keys (default, meaning); nested fields as model.<field>=... and search.<field>=...:"]
    lines += [f"  {f'{key}={value}':{width}s}  {meaning}" for key, value, meaning in keys]
    if hidden:
        lines.append(f"  {', '.join(hidden)}: set by the task_set group (override as key=value)")
    lines += ["", "Groups:"]
    lines += [f"  {group}={'|'.join(config_group_options(group))}" for group in CONFIG_GROUPS]
    lines += ["", "Examples:",
              "  python -m ezm_gpu.train envs=4096                       # EZ-M on the medium set",
              "  python -m ezm_gpu.train task_set=hard preset=hard envs=4096",
              "  python -m ezm_gpu.train task_set=cartpole preset=cpu search=small device=cpu envs=64",
              "  python -m ezm_gpu.train resume=runs/<run> steps=200000  # continue a run (here: extend it)"]
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> None:
    """Hydra entry point: ``python -m ezm_gpu.train key=value group=option ...`` (configs/train.yaml)."""

    from hydra.errors import HydraException

    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "help") for arg in overrides):
        print(usage())
        return
    try:
        changes = _resume_changes(overrides)
        cfg = compose_config(overrides if changes is None else
                             [o for o in overrides if o.partition("=")[0].lstrip("+~") == "resume"])
    except (ConfigError, HydraException) as error:  # e.g. a key that does not exist
        raise SystemExit(f"ezm_gpu.train: {error}")
    try:
        print(f"run directory: {run(cfg, changes)}")
    except RunInterrupted as stopped:
        print(f"ezm_gpu.train: {stopped}", file=sys.stderr)
        raise SystemExit(stopped.exit_code)
    except (ConfigError, CheckpointError, envs.AssetsNotFoundError, TrainingDiverged) as error:
        raise SystemExit(f"ezm_gpu.train: {error}")


if __name__ == "__main__":
    main()
