"""Batched HumanoidBench tasks (and dm_control's cartpole) on MuJoCo-Warp (`ezm_gpu.envs`).

  - ``make(task, num_envs, device, seed, ...)``: one task, many worlds (``HumanoidBenchEnv`` for
    "h1-*" and "h1hand-*", ``CartpoleEnv`` for "cartpole-balance" / "cartpole-swingup"; both ``BatchedEnv``).
  - ``make_set("medium" | "hard" | [task ids], num_envs, ...)``: several tasks as one batch (``TaskSet``).
  - ``resolve_root``: where HumanoidBench's MJCF assets are (argument, $EZM_HUMANOIDBENCH_ROOT, an
    installed humanoid_bench, the user cache, or the pinned download).
  - ``canonical_device``: the device form used throughout (CUDA with an explicit index).
  - ``rewards``: the tasks' rewards and terminations as pure batched torch functions.

Depends on mujoco, mujoco-warp, warp and torch (tensors only); never imports ezm_gpu's algorithm.
"""
from . import rewards
from .assets import AssetsNotFoundError, resolve_root
from .cartpole import CartpoleEnv
from .device import canonical_device, silence_warp
from .env import BatchedEnv, CapacityOverflowError, HumanoidBenchEnv, capacity_for, make
from .multitask import SUCCESS_BARS, TASK_SETS, TaskSet, make_set, success_bar
from .scene import CARTPOLE_TASKS, HARD_TASKS, HUMANOIDBENCH_ROBOTS, MEDIUM_TASKS, Capacity, parse_task_id

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
