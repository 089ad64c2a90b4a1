"""``make``: a task id to its batched env, the class its ``registry`` family names.

The env classes are ``humanoidbench.HumanoidBenchEnv`` (robots h1 and h1hand) and
``cartpole.CartpoleEnv`` (dm_control's cartpole on our own MJCF), both ``base.BatchedEnv``. The other
names below are re-exported from where they live now (``base``, ``humanoidbench``,
``humanoidbench_tasks``, ``registry``), for code that imports them from here.
"""
from __future__ import annotations

from .base import EXPLODED_QVEL, RNG_LANES, BatchedEnv, CapacityOverflowError, hashed_uniform
from .cartpole import CartpoleEnv
from .device import DeviceLike
from .humanoidbench import FRAME_SKIP, RESET_NOISE, HumanoidBenchEnv
from .humanoidbench_tasks import (REACH_GOAL_HIGH, REACH_GOAL_LOW, SIT_HARD_X, SIT_HARD_Y, SIT_HARD_YAW, TIME_LIMIT,
                                  yaw_quaternion)
from .registry import CAPACITIES, DEFAULT_CAPACITY, Capacity, capacity_for, task_spec

__all__ = ["BatchedEnv", "HumanoidBenchEnv", "CartpoleEnv", "make", "ENV_CLASSES", "Capacity",
           "CapacityOverflowError", "DEFAULT_CAPACITY", "CAPACITIES", "capacity_for", "FRAME_SKIP", "RESET_NOISE",
           "RNG_LANES", "TIME_LIMIT", "EXPLODED_QVEL", "hashed_uniform", "yaw_quaternion", "SIT_HARD_X", "SIT_HARD_Y",
           "SIT_HARD_YAW", "REACH_GOAL_LOW", "REACH_GOAL_HIGH"]

#: Env family (``registry.TaskSpec.family``) -> the class that runs its tasks.
ENV_CLASSES: dict[str, type[BatchedEnv]] = {cls.family: cls for cls in (HumanoidBenchEnv, CartpoleEnv)}


def make(task: str, num_envs: int, device: DeviceLike = None, seed: int = 0, **kwargs) -> BatchedEnv:
    """One task, ``num_envs`` worlds: ``HumanoidBenchEnv`` for ids like "h1-walk" ("-v0" accepted),
    ``CartpoleEnv`` for "cartpole-balance" / "cartpole-swingup"; kwargs go to the env class."""
    return ENV_CLASSES[task_spec(task).family](task, num_envs, device=device, seed=seed, **kwargs)
