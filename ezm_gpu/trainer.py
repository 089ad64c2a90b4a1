"""The training run: one ``Trainer`` that owns the worlds, the learner, the replay and the run directory.

``Trainer.run`` reads top to bottom: the updates due by the plan, one decision of every world, again, until
the last decision; the final updates; a checkpoint; the final evaluation. Each unit it drives has one job and
its own tests: ``Collector`` (act → env step → replay insert), ``Learner.update`` (reanalysis → unroll → loss →
Adam → priorities → EMA), ``Curriculum``, ``evaluate``, ``MetricsLogger``/``Progress``, checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import sys
from typing import Optional

import torch

from . import checkpoint as ckpt
from . import config as config_module
from . import envs
from .collect import GRAPH_WARMUP, Collector, EpisodeReturns
from .config import ConfigError, TrainConfig, model_config
from .curriculum import Curriculum
from .distributed import RANK_SEED_STRIDE, World, barrier, broadcast_object, init_world, reduce_
from .evaluate import evaluate
from .graphs import GraphedStep
from .learner import Learner, LearnerConfig
from .metrics import MetricsLogger, results_table
from .model import EZMModel
from .plan import cpu_notice, plan_updates, replay_rows
from .plot import plot_run
from .progress import Progress
from .rng import CounterRNG
from .replay import ReplayBuffer, ReplayConfig
from .rundir import prepare_run_dir, record_changes

__all__ = ["Trainer", "TrainingDiverged", "RunInterrupted", "KEEP_CHECKPOINTS", "RESUME_CHANGES", "build_model",
           "resolve_device"]

KEEP_CHECKPOINTS = 3  # newest checkpoints kept in run_dir/checkpoints
RESUME_CHANGES = ("steps", "eval_interval", "eval_steps", "eval_episodes", "checkpoint_interval", "log_interval",
                  "checkpoint_replay")  # keys a resumed run may change (extend it, log or save differently)


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


def build_model(cfg: TrainConfig, world, device: torch.device) -> EZMModel:
    """The preset's model (with ``cfg.model``'s fields) sized for a task set (padded obs/action dims, one
    action mask per task)."""
    masks = torch.stack([world.action_mask[s.start] for s in world.slices]).float()
    config = model_config(cfg, obs_dim=world.obs_dim, action_dim=world.action_dim, num_tasks=len(world.tasks))
    return EZMModel(config, action_masks=masks).to(device)


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class _NoMetrics:
    """The metrics of a rank other than 0: rank 0 writes the run's metrics."""

    def log(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


class _Divergence:
    """The first non-finite loss (update, value), kept on the device and read only where a log, evaluation or
    checkpoint is due: no host sync per update, and never a checkpoint after a NaN. With several ranks a NaN on
    any of them stops all (the flag is reduced where it is read)."""

    def __init__(self, device: torch.device, ranks: World = World()):
        self.ranks = ranks
        self.update = torch.zeros((), dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, update: int) -> None:
        first = (self.update == 0) & ~torch.isfinite(loss)
        self.update = torch.where(first, update, self.update)
        self.loss = torch.where(first, loss.detach(), self.loss)

    def raise_if_diverged(self, run_dir: pathlib.Path) -> None:
        update = int(reduce_(self.update.clone(), self.ranks, "max"))  # host read: where a log, evaluation or
        # checkpoint is due
        if update:
            where = (f"loss became {float(self.loss)}" if int(self.update) == update else
                     "the loss of another rank became non-finite")
            raise TrainingDiverged(
                f"{where} at update {update}; the last good checkpoint in "
                f"{run_dir / 'checkpoints'} is intact (lower the learning rate or check the observations)")


class _StopSignals:
    """SIGINT/SIGTERM ask the run to stop after the update or decision under way (then it checkpoints); a
    second signal ends the process at once (the last checkpoint on disk is intact)."""

    def __init__(self):
        self.signum: Optional[int] = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Trainer:
    """One training run of ``cfg`` (or, with ``cfg.resume``, the continuation of a run from its directory)."""

    def __init__(self, cfg: TrainConfig, changes: Optional[dict] = None, ranks: World = World()):
        """Checks everything before any work (a bad value is a ConfigError naming it), then builds the run.

        With ``cfg.resume`` set, the run directory's own ``config.yaml`` is the configuration (every other field
        of ``cfg`` is ignored); ``changes`` ({key: value}, keys of ``RESUME_CHANGES`` only, e.g. a larger
        ``steps`` to extend the run) are applied and recorded in its config.yaml.

        ``ranks``: this process's place among torchrun's data-parallel processes (``ezm_gpu.distributed``). Each
        rank steps ``envs / size`` worlds (every task on every rank), keeps its replay shard and samples
        ``batch_size / size`` per update; the learner makes the union's update, so weights and EMA are the same
        everywhere. Rank 0 writes the run directory's shared files (config, metrics, TensorBoard, the learner's
        checkpoint); each other rank its checkpoint shard.
        """
        saved = None
        if cfg.resume:  # continue with the run's own configuration (only `resume` and `changes` may differ)
            saved = config_module.load_run_config(pathlib.Path(cfg.resume))
            fixed = sorted(set(changes or {}) - set(RESUME_CHANGES))
            if fixed:
                raise ConfigError(f"a resumed run may change {', '.join(RESUME_CHANGES)} only, not {', '.join(fixed)}")
            cfg = dataclasses.replace(saved, resume=cfg.resume, **(changes or {}))
        self.cfg, self.tasks = cfg, config_module.validate(cfg)
        self.ranks = ranks
        self._check_ranks(saved)
        if saved is None:
            self.cfg = cfg = dataclasses.replace(cfg, world_size=ranks.size)
        self.device = device = resolve_device(cfg.device)
        if ranks.size > 1 and device.type == "cuda":
            device = self.device = torch.device("cuda", ranks.local_rank)
        if cfg.capture == "cuda" and device.type != "cuda":
            raise ConfigError(f"invalid capture='cuda': CUDA graphs need a CUDA device, the run's is {device} "
                              "(capture=trace tests the capture path on any device; capture=off runs eagerly)")
        init_world(ranks, device)
        envs.silence_warp()  # kernel-load lines would drown the progress bar
        # Rank 0 makes (or checks) the run directory; every rank then uses it.
        self.run_dir, resume_from = broadcast_object(prepare_run_dir(cfg, self.tasks) if ranks.main else None, ranks)
        if cfg.device == "auto" and device.type == "cpu" and ranks.main:
            print(cpu_notice(cfg, self.tasks), file=sys.stderr)
        shard_envs, shard_batch = cfg.envs // ranks.size, cfg.batch_size // ranks.size  # this rank's share
        if ranks.size > 1 and ranks.main:
            print(f"ezm_gpu.train: data-parallel, world_size {ranks.size} ({torch.distributed.get_backend()}): "
                  f"{shard_envs} worlds and batch {shard_batch} per rank, {cfg.envs} and {cfg.batch_size} in all",
                  file=sys.stderr)
        torch.manual_seed(cfg.seed)  # the model's initial weights: the same on every rank
        seed = cfg.seed + ranks.rank * RANK_SEED_STRIDE  # this rank's worlds and draws

        self.world = world = envs.make_set(self.tasks, shard_envs, device=device, seed=seed,
                                           time_limit=cfg.episode_length, ignore_termination=cfg.ignore_termination)
        worlds_per_task = [s.stop - s.start for s in world.slices]
        self.plan = plan = plan_updates(cfg, min(worlds_per_task) * ranks.size)  # the run's plan, on every rank
        self.learner = Learner(build_model(cfg, world, device), LearnerConfig(
            lr=cfg.lr, lr_decay_at=cfg.lr_decay_at, ema_tau=cfg.ema_tau, ema_interval=cfg.ema_interval, total_updates=max(1, plan.total),
            autocast_dtype=_autocast_dtype(cfg.precision, device)), cfg.search, ranks)
        # A resumed run reads its checkpoint once, mapped (only the bytes used are read, into host memory), and
        # keeps the replay size it was saved with; a new run sizes the replay to what it can fill.
        loaded = None if resume_from is None else self._load(resume_from)
        capacity = (loaded["replay"]["config"]["capacity"] if loaded is not None and "replay" in loaded else
                    min(cfg.replay_capacity, replay_rows(cfg, plan, max(worlds_per_task))))
        num_tasks = len(self.tasks)
        self.replay = ReplayBuffer(ReplayConfig(
            num_tasks=num_tasks, capacity=capacity, obs_dim=world.obs_dim, action_dim=world.action_dim,
            num_worlds=shard_envs, td_steps=cfg.td_steps, batch_size=shard_batch // num_tasks * num_tasks), device=device,
            shared_max=None if ranks.size == 1 else lambda priorities: reduce_(priorities, ranks, "max"))
        # A captured step draws from a counter on the device (a torch.Generator's state lives on the host).
        self.generator = (torch.Generator(device).manual_seed(seed) if cfg.capture == "off"
                          else CounterRNG(seed, device))
        self.returns = EpisodeReturns(world.task_ids, num_tasks, staggered=cfg.stagger_resets)
        self.collector = Collector(world, self.replay, cfg.search, cfg.action_repeat, cfg.start_transitions,
                                   self.returns, self.generator, cfg.capture, shards=ranks.size)
        self.update_step = GraphedStep(lambda: self.learner.update(self.replay, self.generator), cfg.capture,
                                       warmup=GRAPH_WARMUP, name="learner update")
        self.curriculum = Curriculum(world, cfg.episode_length, plan.decisions)
        self.updates = 0  # updates made (with the collector's decisions, they place a run on the plan)
        self.divergence = _Divergence(device, ranks)
        self.collector.reset(stagger=cfg.stagger_resets)
        if loaded is not None:
            self.load_state_dict(loaded)
            del loaded  # the loaded state is released: the device never holds a second replay
            if self.collector.decisions > plan.decisions:
                raise ConfigError(f"invalid steps={cfg.steps}: the run has taken "
                                  f"{self.collector.env_steps_per_task} env steps per task already; give at least that")
            if ranks.main:
                record_changes(self.run_dir, saved, cfg)
        elif ranks.main:
            (self.run_dir / "config.yaml").write_text(config_module.config_to_yaml(cfg))
        # A resumed run drops rows logged after its checkpoint (a kill between the two would repeat them).
        self.metrics = (MetricsLogger(self.run_dir, resume_at=None if resume_from is None else
                                      (self.updates, self.collector.env_steps_per_task)) if ranks.main else _NoMetrics())
        self.stop = _StopSignals()
        self._agreed_stop = False  # the ranks' shared decision to stop (``stopped``)

    def _check_ranks(self, saved: Optional[TrainConfig]) -> None:
        """The world size fits the run: envs and batch split evenly with every task on every rank, and a resumed
        run continues with the world size it was trained with."""
        cfg, size, tasks = self.cfg, self.ranks.size, len(self.tasks)
        if saved is not None and saved.world_size != size:
            launch = ("python -m ezm_gpu.train" if saved.world_size == 1 else
                      f"torchrun --nproc_per_node={saved.world_size} -m ezm_gpu.train")
            raise ConfigError(f"the run in {cfg.resume} was trained with world_size={saved.world_size}; this launch has "
                              f"{size} rank(s): resume it with {launch} resume=... (its replay and worlds are "
                              "sharded by rank: resharding is not supported)")
        if saved is None and cfg.world_size not in (1, size):
            raise ConfigError(f"invalid world_size={cfg.world_size}: torchrun sets it (this launch has {size} "
                              "rank(s)); leave it out")
        if size == 1:
            return
        if cfg.envs % size or cfg.envs // size < tasks:
            raise ConfigError(f"invalid envs={cfg.envs} for {size} ranks: a multiple of {size} with at least one world "
                              f"per task ({tasks} tasks) on every rank")
        if cfg.batch_size // size < tasks:
            raise ConfigError(f"invalid batch_size={cfg.batch_size} for {size} ranks: every rank samples batch_size / "
                              f"{size}, at least one per task ({tasks} tasks)")

    def _load(self, path: pathlib.Path) -> dict:
        """The checkpoint this rank resumes from, mapped in host memory: the learner from rank 0's file (the same
        weights on every rank), the rest from this rank's own shard."""
        loaded = ckpt.load_checkpoint(path, map_location="cpu", mmap=True)  # (world size: _check_ranks, from config)
        if self.ranks.main:
            return loaded
        shard = ckpt.load_checkpoint(ckpt.shard_path(path, self.ranks.rank), map_location="cpu", mmap=True)
        return {**shard, "learner": loaded["learner"]}

    def run(self) -> pathlib.Path:
        """Trains to the end of the plan; returns the run directory. Raises RunInterrupted after the checkpoint
        a SIGINT/SIGTERM asked for, TrainingDiverged at a non-finite loss."""
        plan, collector = self.plan, self.collector
        # The bar counts decisions and updates alike: after the warm-up their mix is fixed by the plan, so the
        # rate, and the ETA, are steady; and it moves during the updates of a decision, however many.
        self.progress = Progress(plan.decisions + plan.total, collector.decisions + self.updates,
                                 disable=not self.ranks.main)
        self.progress.rates(collector.decisions * self.cfg.envs * self.cfg.action_repeat, self.updates)  # the clock
        try:
            with self.stop:
                while not self.stopped:
                    self.update_until(plan.due(collector.decisions))  # (catches up a mid-decision checkpoint)
                    self._agree_stop()
                    if collector.decisions == plan.decisions or self.stopped:
                        break
                    info = collector.collect(self.learner.ema.copy)
                    self.curriculum.record(info["finished"], info["episode_return"], collector.decisions)
                    self.progress.update(1)
                if collector.decisions == plan.decisions and not self.stopped:
                    self.progress.describe(f"final updates ({plan.final})")
                    self.update_until(plan.total)  # the final updates, after collection (release: 2e4 after 6e5)
                self.world.check()
                self.divergence.raise_if_diverged(self.run_dir)
                self.checkpoint()
        finally:
            self.progress.close()
            self.metrics.close()
        if self.stopped:
            raise RunInterrupted(self.stop.signum, self.updates, self.run_dir)
        self.final_evaluation()
        return self.run_dir

    @property
    def stopped(self) -> bool:
        """A signal asked the run to stop (with several ranks: one of them was asked, as the ranks last agreed)."""
        return self.stop.signum is not None if self.ranks.size == 1 else self._agreed_stop

    def _agree_stop(self) -> None:
        """With several ranks, whether any was signalled, agreed by all (at each decision, and every log_interval
        updates): they then stop at the same update, and checkpoint together."""
        if self.ranks.size > 1:
            flag = torch.tensor(float(self.stop.signum is not None), device=self.device)
            self._agreed_stop = bool(reduce_(flag, self.ranks, "max"))
            if self._agreed_stop and self.stop.signum is None:
                self.stop.signum = int(signal.SIGTERM)  # told by another rank: report it as the launcher's signal

    def update_until(self, target: int) -> None:
        """Updates until ``target`` updates are made (or a signal asks to stop), each followed by ``after_update``."""
        while self.updates < target and not self.stopped:
            terms = self.update_step()  # (captured: the same tensors every update, read before the next)
            self.updates += 1
            self.progress.update(1)
            self.divergence.record(terms["loss"], self.updates)
            self.after_update(terms)
            if self.updates % self.cfg.log_interval == 0:
                self._agree_stop()

    def after_update(self, terms: dict) -> None:
        """Logs, evaluations and checkpoints on their update intervals (the only host reads of training)."""
        cfg, updates = self.cfg, self.updates
        if not any(updates % interval == 0 for interval in (cfg.log_interval, cfg.eval_interval,
                                                            cfg.checkpoint_interval)):
            return
        self.divergence.raise_if_diverged(self.run_dir)
        env_steps = self.collector.env_steps_per_task
        if updates % cfg.log_interval == 0:
            row = {f"train/{k}": float(v) for k, v in terms.items()}
            reduce_(self.returns.sum, self.ranks)  # the finished episodes of every rank
            reduce_(self.returns.count, self.ranks)
            row.update({f"episode/return/{task}": mean for task, mean in self.returns.take_means(self.tasks).items()})
            self.curriculum.switch_saturated(lambda saturated: reduce_(saturated, self.ranks, "min"))
            row.update(self.progress.rates(self.collector.decisions * cfg.envs * cfg.action_repeat, updates))
            self.metrics.log(updates, env_steps, row)
            self.progress.show(row, self.tasks)
        if updates % cfg.eval_interval == 0:
            scores = evaluate(self.learner.ema.copy, self.tasks, cfg, self.device, cfg.seed + updates)
            self.metrics.log(updates, env_steps, {f"eval/return/{t}": v for t, v in scores.items()})
            self.progress.restart_clock()  # the evaluation's time is not training throughput
        if updates % cfg.checkpoint_interval == 0:
            self.checkpoint()

    def final_evaluation(self) -> dict:
        """The EMA model's scores at the end (metrics, TensorBoard, a table, the learning-curve PNG)."""
        scores = evaluate(self.learner.ema.copy, self.tasks, self.cfg, self.device, self.cfg.seed + 1)
        if not self.ranks.main:  # (every rank evaluates the same weights from the same seed: the same scores)
            return scores
        metrics = MetricsLogger(self.run_dir)
        metrics.log(self.updates, self.collector.env_steps_per_task, {f"eval/return/{t}": v for t, v in scores.items()})
        metrics.close()
        print(results_table(scores))
        try:
            plot_run(self.run_dir)  # run_dir/learning_curves.png
        except (OSError, ValueError) as error:  # the run itself is complete: say why the picture is missing
            print(f"ezm_gpu.train: learning_curves.png not written ({error})", file=sys.stderr)
        return scores

    def checkpoint(self) -> None:
        """Writes the run's state atomically and keeps the newest KEEP_CHECKPOINTS. With several ranks each other
        rank writes its shard first; rank 0 writes the checkpoint (with the learner, once) when all are on disk."""
        folder = self.run_dir / "checkpoints"
        path = ckpt.checkpoint_path(folder, self.updates)
        state = self.state_dict()
        if not self.ranks.main:
            del state["learner"]  # (the same on every rank: rank 0's file holds it)
            ckpt.save_checkpoint(ckpt.shard_path(path, self.ranks.rank), state)
        barrier(self.ranks)
        if self.ranks.main:
            ckpt.save_checkpoint(path, {**state, "world_size": self.ranks.size})
            ckpt.rotate_checkpoints(folder, path, KEEP_CHECKPOINTS)
        barrier(self.ranks)

    def state_dict(self) -> dict:
        """Everything that continues the run exactly (the replay only with ``checkpoint_replay``)."""
        state = {"learner": self.learner.state_dict(), "envs": self.world.state_dict(),
                 "rng": ckpt.capture_rng_state([self.generator]),
                 "counters": {"iteration": self.collector.decisions, "updates": self.updates},
                 "obs": self.collector.obs, "returns": {**self.returns.state_dict(), **self.curriculum.state_dict()}}
        if self.cfg.checkpoint_replay:
            state["replay"] = self.replay.checkpoint_state()  # the rows written so far, not the whole buffer
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copies a loaded checkpoint (host memory) into the run's own (device) tensors, keeping no reference
        to ``state`` (2.75 GB of replay for the medium set at envs=4096, 13.7 GB hard)."""
        self.learner.load_state_dict(state["learner"])
        if "replay" in state:  # absent when the run checkpoints without it (checkpoint_replay=false)
            self.replay.load_state_dict(state["replay"])
        self.world.load_state_dict(state["envs"])
        ckpt.restore_rng_state(state["rng"], [self.generator])
        self.collector.decisions, self.updates = int(state["counters"]["iteration"]), int(state["counters"]["updates"])
        self.collector.obs = state["obs"].to(self.device)
        returns = {key: value.to(self.device) for key, value in state["returns"].items()}
        self.returns.load_state_dict(returns)
        self.curriculum.load_state_dict(returns)
