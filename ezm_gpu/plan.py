"""A run's budget: how many decisions and updates it makes and when, the replay it needs, its CPU cost.

``steps`` counts env steps per task and ``updates_per_step`` updates per env step per task, so a run's
update count is the same whatever ``envs`` is: more worlds take the same env steps in fewer decisions,
with more updates after each (docs/algorithm.md#update-budget).
"""
from __future__ import annotations

import dataclasses
import math

from .config import TrainConfig

__all__ = ["UpdatePlan", "plan_updates", "replay_rows", "cpu_notice"]


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
    fewer decisions, with more updates after each. Release (``docs/algorithm.md#update-budget``): medium 0.6 x 1M = 6e5 and hard
    0.3 x 2M = 6e5, each + 2e4 (final_updates 1/30).
    """
    decisions = math.ceil(cfg.steps / (per_task_worlds * cfg.action_repeat))
    random_decisions = min(decisions, math.ceil(cfg.start_transitions / per_task_worlds))
    collection = round(cfg.updates_per_step * cfg.steps)
    return UpdatePlan(decisions=decisions, random_decisions=random_decisions, collection=collection,
                      final=round(cfg.final_updates * collection))


def replay_rows(cfg: TrainConfig, plan: UpdatePlan, worlds_per_task: int) -> int:
    """Rows per task a run can write: each world's transition of every decision and the final observation
    of each episode it ends (episodes last at least ``episode_length`` env steps unless terminations count)."""
    episodes = plan.decisions if not cfg.ignore_termination else \
        math.ceil(plan.decisions * cfg.action_repeat / cfg.episode_length) + 1  # +1: a staggered first episode
    return worlds_per_task * (plan.decisions + episodes)


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
