"""Task ids, and the tasks' scenes (HumanoidBench's, our cartpole) loaded into MuJoCo (C) and MuJoCo-Warp."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import mujoco

from .assets import resolve_root
from .rewards import HARD_TASKS

__all__ = ["MEDIUM_TASKS", "HARD_TASKS", "CARTPOLE_TASKS", "HUMANOIDBENCH_ROBOTS", "TaskId", "valid_task_ids",
           "parse_task_id", "load_mj_model", "Capacity", "put_warp"]

# EZ-M's hard set (robot h1hand, rewards.HARD_TASKS: the task table's order) is the medium set
# (robot h1) plus HumanoidBench's sit, balance and reach tasks.
MEDIUM_TASKS = HARD_TASKS[:9]
CARTPOLE_TASKS = ("balance", "swingup")  # dm_control's cartpole on our own MJCF (envs/cartpole.py)
# h1: H1 with 19 position actuators; h1hand: H1 plus two Shadow hands, 61 actuators. Both robots have
# every hard-set task (HumanoidBench ships the scenes for both).
HUMANOIDBENCH_ROBOTS = ("h1", "h1hand")
_ROBOT_TASKS = {"h1": HARD_TASKS, "h1hand": HARD_TASKS, "cartpole": CARTPOLE_TASKS}


@dataclasses.dataclass(frozen=True)
class TaskId:
    """A task: robot ("h1", "h1hand", or the domain "cartpole") and task ("walk"); ``str()`` is the
    canonical id "h1-walk"."""

    robot: str
    task: str

    def __str__(self) -> str:
        return f"{self.robot}-{self.task}"


def valid_task_ids() -> list[str]:
    """Every task id, robot by robot in task order ("h1-stand", ..., "h1hand-reach", "cartpole-...")."""
    return [f"{robot}-{task}" for robot, tasks in _ROBOT_TASKS.items() for task in tasks]


def parse_task_id(task_id: str) -> TaskId:
    """"h1-walk", "h1hand-reach" or HumanoidBench's registered "h1-walk-v0" -> TaskId; unknown ids list the
    valid ones."""
    if not isinstance(task_id, str):
        raise TypeError(f"task id must be a string such as 'h1-walk', got {type(task_id).__name__}")
    name = task_id[:-3] if task_id.endswith("-v0") else task_id
    robot, _, task = name.partition("-")
    if task not in _ROBOT_TASKS.get(robot, ()):
        raise ValueError(f"unknown task {task_id!r}; valid ids (a trailing '-v0' is accepted): "
                         + ", ".join(valid_task_ids()))
    return TaskId(robot, task)


def load_mj_model(task_id: str, root: Optional[os.PathLike | str] = None) -> mujoco.MjModel:
    """The task's scene compiled by MuJoCo (C): HumanoidBench's own ``envs/{robot}_pos_{task}.xml``,
    or for cartpole our MJCF string (no assets, ``root`` unused)."""
    task = parse_task_id(task_id)
    if task.robot == "cartpole":
        from .cartpole import CARTPOLE_XML

        return mujoco.MjModel.from_xml_string(CARTPOLE_XML)
    path = resolve_root(root) / "humanoid_bench" / "assets" / "envs" / f"{task.robot}_pos_{task.task}.xml"
    return mujoco.MjModel.from_xml_path(str(path))


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Per-world contact and constraint capacity of a MuJoCo-Warp Data (``nconmax``/``njmax``)."""

    contacts: int  # contacts per world
    constraints: int  # constraint rows per world


def put_warp(mj_model: mujoco.MjModel, num_worlds: int, capacity: Capacity, device: Optional[str] = None):
    """MuJoCo-Warp Model and Data for ``num_worlds`` worlds of ``mj_model`` with the given capacity.

    Returns ``(model, data)``. A step that needs more contacts or constraint rows than the capacity
    sets a bit in ``data.overflow`` (per world) instead of growing: callers check it and fail loudly.
    """
    import mujoco_warp as mjw
    import warp as wp

    if num_worlds < 1:
        raise ValueError(f"num_worlds must be >= 1, got {num_worlds}")
    with wp.ScopedDevice(device):
        model = mjw.put_model(mj_model)
        data = mjw.make_data(mj_model, nworld=num_worlds, nconmax=capacity.contacts, njmax=capacity.constraints)
    return model, data
