"""Batched HumanoidBench tasks (and dm_control's cartpole) on MuJoCo-Warp (`ezm_gpu.envs`).

  - ``make(task, num_envs, device, seed, ...)``: one task, many worlds (``HumanoidBenchEnv`` for
    "h1-*" and "h1hand-*", ``CartpoleEnv`` for "cartpole-balance" / "cartpole-swingup"; both ``BatchedEnv``).
  - ``make_set("medium" | "hard" | [task ids], num_envs, ...)``: several tasks as one batch (``TaskSet``).
  - ``resolve_root``: where HumanoidBench's MJCF assets are (argument, $EZM_HUMANOIDBENCH_ROOT, an
    installed humanoid_bench, the user cache, or the pinned download).
  - ``canonical_device``: the device form used throughout (CUDA with an explicit index).
  - ``rewards``: the tasks' rewards and terminations as pure batched torch functions.

Modules, bottom up (none imports one above it; ``tests/test_envs_layout.py``): ``device``, ``capture``,
``assets``, ``tolerance``; ``humanoidbench_tasks`` and ``cartpole_task`` (each family's per-task functions);
``registry`` (every task's facts, the task-id parser, the task sets); ``scene``, ``rewards``; ``base``
(``BatchedEnv``); ``humanoidbench``, ``cartpole`` (the env classes); ``env`` (``make``); ``multitask``.

Depends on mujoco, mujoco-warp, warp and torch (tensors only); never imports ezm_gpu's algorithm.
"""
from . import rewards
from .assets import AssetsNotFoundError, resolve_root
from .base import BatchedEnv, CapacityOverflowError
from .cartpole import CartpoleEnv
from .device import canonical_device, silence_warp
from .env import make
from .humanoidbench import HumanoidBenchEnv
from .multitask import TaskSet, make_set
from .registry import (CARTPOLE_TASKS, HARD_TASKS, HUMANOIDBENCH_ROBOTS, MEDIUM_TASKS, SUCCESS_BARS, TASK_SETS,
                       Capacity, capacity_for, parse_task_id, success_bar)

__all__ = [
    "make",
    "make_set",
    "BatchedEnv",
    "HumanoidBenchEnv",
    "CartpoleEnv",
    "TaskSet",
    "TASK_SETS",
    "SUCCESS_BARS",
    "success_bar",
    "MEDIUM_TASKS",
    "HARD_TASKS",
    "CARTPOLE_TASKS",
    "HUMANOIDBENCH_ROBOTS",
    "Capacity",
    "capacity_for",
    "CapacityOverflowError",
    "AssetsNotFoundError",
    "resolve_root",
    "canonical_device",
    "silence_warp",
    "parse_task_id",
    "rewards",
]
