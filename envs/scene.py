"""The tasks' scenes: a task's model compiled by MuJoCo (C), and MuJoCo-Warp's model and data for W worlds.

The task ids, task lists and ``Capacity`` are ``registry``'s (re-exported here, where they used to live).
"""
from __future__ import annotations

import os
from typing import Optional

import mujoco

from .assets import scene_path
from .registry import (CARTPOLE_TASKS, HARD_TASKS, HUMANOIDBENCH_ROBOTS, MEDIUM_TASKS, Capacity, TaskId,
                       parse_task_id, task_spec, valid_task_ids)

__all__ = ["MEDIUM_TASKS", "HARD_TASKS", "CARTPOLE_TASKS", "HUMANOIDBENCH_ROBOTS", "TaskId", "valid_task_ids",
           "parse_task_id", "load_mj_model", "geom_names", "Capacity", "put_warp"]


def load_mj_model(task_id: str, root: Optional[os.PathLike | str] = None) -> mujoco.MjModel:
    """The task's scene compiled by MuJoCo (C): HumanoidBench's own ``envs/{robot}_pos_{task}.xml`` under
    ``root`` (see ``assets.resolve_root``), or the MJCF text the task carries (cartpole: ``root`` unused)."""
    spec = task_spec(task_id)
    if spec.mjcf is not None:
        return mujoco.MjModel.from_xml_string(spec.mjcf)
    return mujoco.MjModel.from_xml_path(str(scene_path(spec.robot, spec.name, root)))


def geom_names(mj_model: mujoco.MjModel) -> list[str]:
    """Every geom's name in id order ("" for an unnamed one): what ``rewards.task_constants`` reads."""
    return [mujoco.mj_id2name(mj_model, mujoco.mjtObj.mjOBJ_GEOM, i) or "" for i in range(mj_model.ngeom)]


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
