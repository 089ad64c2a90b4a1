"""HumanoidBench rewards and terminations by task id, as pure, batched torch functions.

``compute(task, inputs, constants, state)`` is one step of a task's reward and termination for a batch
of worlds (one row per world, leading dimension ``W``); ``task_constants`` and ``initial_state`` build
what it reads besides the physics. Nothing reads MuJoCo or MuJoCo-Warp, so the same code serves any
physics backend and is checked exactly against recordings of the original
(``tests/test_envs_rewards.py``). Which reward and termination a task has is its ``registry.TASKS``
entry; the functions themselves, and the terms they are built from, are ``humanoidbench_tasks``'
(re-exported here).

Implemented: the 14 hard-set tasks (:data:`HARD_TASKS`: the medium-set locomotion tasks ``stand, walk,
run, stair, crawl, pole, slide, hurdle, maze`` plus ``sit_simple, sit_hard, balance_simple,
balance_hard, reach``) for the robots ``h1`` and ``h1hand``. Timing: HumanoidBench evaluates rewards
right after ``mj_step``: fill :class:`RewardInputs` with the post-step ``qpos``/``qvel`` and everything
else from the last substep's forward pass.

No function performs a host synchronisation, so they can run inside a captured CUDA graph. Only
:func:`task_constants` touches host data; call it once per task model.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .humanoidbench_tasks import (BALANCE_HEAD_HEIGHT, COLLISION_DISCOUNT, CRAWL_HEIGHT, MAZE_CHECKPOINT_RADIUS,
                                  MAZE_CHECKPOINTS, MAZE_LAST_STAGE, MAZE_SPEED, POLE_SPEED, REACH_CLOSE_BONUS,
                                  REACH_CLOSE_DIST, REACH_SUCCESS_BONUS, REACH_SUCCESS_DIST, RUN_SPEED,
                                  STAND_HEIGHT, WALK_SPEED, RewardInputs, TaskConstants, balance_contact_fail,
                                  contact_touches, crawl_pelvis_orientation, forward_move, maze_move_direction,
                                  maze_update_stage, reset_state, small_control, stand_terms, tolerance)
from .registry import HARD_TASKS, HUMANOIDBENCH, TASKS as _SPECS, HumanoidBenchSpec, task_spec

__all__ = [
    "RewardInputs",
    "TaskConstants",
    "TaskFn",
    "TASKS",
    "TASK_NAMES",
    "HARD_TASKS",
    "tolerance",
    "small_control",
    "stand_terms",
    "forward_move",
    "contact_touches",
    "maze_update_stage",
    "maze_move_direction",
    "crawl_pelvis_orientation",
    "balance_contact_fail",
    "task_constants",
    "initial_state",
    "reset_state",
    "canonical_task_name",
    "compute",
    # HumanoidBench's constants (humanoidbench_tasks)
    "STAND_HEIGHT", "CRAWL_HEIGHT", "WALK_SPEED", "RUN_SPEED", "POLE_SPEED", "MAZE_SPEED", "MAZE_CHECKPOINTS",
    "MAZE_LAST_STAGE", "MAZE_CHECKPOINT_RADIUS", "COLLISION_DISCOUNT", "BALANCE_HEAD_HEIGHT", "REACH_CLOSE_DIST",
    "REACH_SUCCESS_DIST", "REACH_CLOSE_BONUS", "REACH_SUCCESS_BONUS",
]

# A task: (inputs, constants, state) -> (reward [W], terminated [W] bool, terms, new state).
TaskFn = Callable[[RewardInputs, TaskConstants, Mapping[str, Tensor]],
                  "tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]"]


def _task_fn(spec: HumanoidBenchSpec) -> TaskFn:
    """A spec's reward and termination as one TaskFn."""

    def task(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
        reward, terms, new_state = spec.reward(inputs, consts, state)
        return reward, spec.terminate(inputs, consts), terms, new_state

    return task


#: Task id (``<robot>-<task>``) -> task function ``(inputs, constants, state) -> (reward, terminated,
#: terms, new_state)``. ``terms`` holds exactly HumanoidBench's numeric ``info`` entries.
TASKS: dict[str, TaskFn] = {task: _task_fn(spec) for task, spec in _SPECS.items() if spec.family == HUMANOIDBENCH}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def _spec(task: str) -> HumanoidBenchSpec:
    """The HumanoidBench spec of a task id; KeyError for tasks without rewards here."""
    try:
        spec = task_spec(task)
    except ValueError:
        spec = None
    if spec is None or spec.family != HUMANOIDBENCH:
        raise KeyError(f"no reward for task {task!r}; known: {', '.join(TASK_NAMES)}")
    return spec


def canonical_task_name(task: str) -> str:
    """``"h1-walk-v0"`` -> ``"h1-walk"``; raises KeyError for tasks without rewards here."""
    return str(_spec(task).task_id)


def task_constants(task: str, geom_names: Sequence[str] | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
                   ) -> TaskConstants:
    """Build a task's constants from its model's geom names (host side, once per model).

    Args:
        task: task id, e.g. ``"h1-hurdle"`` (``-v0`` accepted).
        geom_names: every geom's name in id order (``""`` for unnamed), e.g. the fixtures'
            ``meta_geom_names``; required by hurdle, pole, maze and balance_{simple,hard}.
        device, dtype: where the tensors live; ``dtype`` applies to the maze checkpoints.

    Returns:
        :class:`TaskConstants` with the geom masks / checkpoints the task needs (others None).
    """
    spec = _spec(task)
    if spec.constants is None:
        return TaskConstants()
    if geom_names is None:
        raise ValueError(f"{task} needs geom_names")
    return spec.constants(task, [str(n) for n in geom_names], device, dtype)


def initial_state(task: str, num_worlds: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Task state right after reset. Maze: ``maze_stage`` [W] int64 = 0, ``move_direction`` [W, 3] = +x.
    Reach: ``reach_goal`` [W, 3] = 0 (m, world frame; the caller draws the goals and writes them here).
    Other tasks are stateless ({})."""
    spec = _spec(task)
    return {} if spec.initial_state is None else spec.initial_state(num_worlds, device, dtype)


def compute(task: str, inputs: RewardInputs, constants: TaskConstants | None = None,
            state: Mapping[str, Tensor] | None = None
            ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Reward, termination and info terms of one step of ``task`` for every world.

    Args:
        task: task id, e.g. ``"h1-walk"`` or ``"h1-walk-v0"``.
        inputs: the step's physics quantities (see :class:`RewardInputs`).
        constants: from :func:`task_constants` (needed by hurdle, pole, maze, balance).
        state: task state before the step (maze: from :func:`initial_state` or the previous call;
            reach: ``reach_goal``).

    Returns:
        reward [W] float, terminated [W] bool, terms (HumanoidBench's ``info`` names, each [W] float,
        including ``per_timestep_reward``), and the task state after the step (maze: ``maze_stage``
        updated before the reward used it, ``move_direction``; reach: unchanged).
    """
    fn = TASKS[canonical_task_name(task)]
    return fn(inputs, constants if constants is not None else TaskConstants(), state if state is not None else {})
