"""Every task, declared once: its id, robot, env family, reward, termination, reset, observation, capacity,
episode length and success bar (``TASKS``), the one task-id parser, and the task sets.

A task is one ``TaskSpec`` in ``TASKS``; everything else reads it from there: the env classes
(``humanoidbench.HumanoidBenchEnv``, ``cartpole.CartpoleEnv``, picked by ``env.make`` from the spec's
``family``), the id-keyed reward API (``rewards``), the scenes (``scene.load_mj_model``), the task sets and
the success bars. Adding a HumanoidBench task: its reward (and any new termination or hook) in
``humanoidbench_tasks``, one row in ``_HUMANOIDBENCH_TASKS``. Adding a family: its functions in a module of
their own, its rows here, its ``BatchedEnv`` subclass, and the class in ``env.make``'s table.

Task ids are "<robot>-<task>" ("h1-walk", "h1hand-reach", "cartpole-swingup"); HumanoidBench's registered
gym names ("h1-walk-v0", the recordings' file names) are accepted everywhere and mean the same task.
``parse_task_id`` is the only place that reads an id.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from . import cartpole_task as cp
from . import humanoidbench_tasks as hb

__all__ = ["TaskId", "Capacity", "TaskSpec", "HumanoidBenchSpec", "TASKS", "FAMILIES", "HUMANOIDBENCH", "CARTPOLE",
           "parse_task_id", "task_spec", "valid_task_ids", "HUMANOIDBENCH_ROBOTS", "HARD_TASKS", "MEDIUM_TASKS",
           "CARTPOLE_TASKS", "TASK_SETS", "SUCCESS_BARS", "success_bar", "DEFAULT_CAPACITY", "CAPACITIES",
           "CARTPOLE_CAPACITY", "capacity_for"]

HUMANOIDBENCH, CARTPOLE = "HumanoidBench", "cartpole"  # the env families (``TaskSpec.family``)
FAMILIES = (HUMANOIDBENCH, CARTPOLE)
_GYM_SUFFIX = "-v0"  # HumanoidBench registers its tasks as gym ids "<robot>-<task>-v0"


@dataclasses.dataclass(frozen=True)
class TaskId:
    """A task: robot ("h1", "h1hand", or the domain "cartpole") and task ("walk"); ``str()`` is the
    canonical id "h1-walk"."""

    robot: str
    task: str

    def __str__(self) -> str:
        return f"{self.robot}-{self.task}"


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Per-world contact and constraint capacity of a MuJoCo-Warp Data (``nconmax``/``njmax``)."""

    contacts: int  # contacts per world
    constraints: int  # constraint rows per world


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task's facts. The hooks' signatures are their family's (W worlds, float32 on the env's device):

    Attributes:
      robot, name: the task id is "{robot}-{name}" (``task_id``, ``str(task_id)``).
      family: the env that runs it, ``HUMANOIDBENCH`` (``HumanoidBenchEnv``) or ``CARTPOLE`` (``CartpoleEnv``).
      mjcf: the model's MJCF text, or None: HumanoidBench's scene file of (robot, name) among its assets
        (``assets.scene_path``).
      reward: HumanoidBench ``(RewardInputs, TaskConstants, state) -> (reward [W], terms {name: [W]},
        new state)``; cartpole ``(cart x [W], pole cos θ [W], pole θ̇ [W], control [W]) -> (reward [W],
        terms)``.
      terminate: HumanoidBench ``(RewardInputs, TaskConstants) -> [W] bool``; cartpole ``(qpos [W, nq],
        qvel [W, nv]) -> [W] bool``.
      reset: HumanoidBench ``(env, qpos [W, nq]) -> qpos [W, nq]``, applied to the keyframe + noise draw;
        cartpole ``(uniforms [W, RESET_DRAWS]) -> (qpos [W, nq], qvel [W, nv])``.
      observation: HumanoidBench ``(env) -> [W, obs_dim]``; cartpole ``(qpos, qvel) -> [W, obs_dim]``.
      capacity: MuJoCo-Warp contact/constraint capacity per world (the env's default).
      time_limit: episode length in env steps (the env's default).
      success_bar: the 1000-step return at which the task counts as solved.
    """

    robot: str
    name: str
    family: str
    mjcf: Optional[str]
    reward: Callable
    terminate: Callable
    reset: Callable
    observation: Callable
    capacity: Capacity
    time_limit: int
    success_bar: float

    @property
    def task_id(self) -> TaskId:
        return TaskId(self.robot, self.name)


@dataclasses.dataclass(frozen=True)
class HumanoidBenchSpec(TaskSpec):
    """A HumanoidBench task: ``TaskSpec`` plus what a few tasks add to the family's shared machinery.

    Attributes:
      obs_extra_dim: observation entries after qpos ⊕ qvel (reach: left hand ⊕ goal, 6).
      constants: ``(task, geom names, device, dtype) -> TaskConstants`` built once per model (contact geom
        sets, maze checkpoints), or None: the task needs none.
      initial_state: ``(num_worlds, device, dtype) -> {name: [W, ...]}`` task state after a reset (maze's
        stage, reach's goal), or None: stateless.
      reset_state: ``(env, mask [W] bool) -> None`` redraws the task state of the worlds being reset
        (reach's goal), or None.
      kinematics_after_reset: recompute body/site poses from qpos after a reset, because ``observation``
        reads a site pose: otherwise a reset world's first observation would show the pose of the last
        substep before the reset (see ``HumanoidBenchEnv._reset_task_state``).
    """

    obs_extra_dim: int
    constants: Optional[Callable]
    initial_state: Optional[Callable]
    reset_state: Optional[Callable]
    kinematics_after_reset: bool


# --- capacities --------------------------------------------------------------------------------------
# The recordings peak at 15 contacts per world (h1, falls included); 3x that, 4 pyramidal rows each.
DEFAULT_CAPACITY = Capacity(contacts=48, constraints=256)
# Contact and constraint-row capacity per world, by robot. h1hand, measured on MuJoCo-Warp (CPU) over one
# env step (all 10 substeps) from each of the 400 recorded states of every h1hand recording (falls and
# random actions included): at most 87 contacts and 396 constraint rows in a world (slide; the other
# tasks 35-77 contacts, 196-356 rows; p99 over worlds 25-51 contacts, 153-253 rows; the recordings'
# own aux_ncon peaks at 67). Capacity 2.2x / 2.6x that: ~0.45 MB of MuJoCo-Warp data per world
# (3.7 GB at 8192 worlds) against 0.17 MB at h1's 48/256; no measurable steps/s difference on the CPU
# between 512 and 1024 rows (within the machine's noise).
CAPACITIES = {"h1": DEFAULT_CAPACITY, "h1hand": Capacity(contacts=192, constraints=1024)}
# No contacts (disabled); the slider's limit is the only constraint (at most 1 row per world).
CARTPOLE_CAPACITY = Capacity(contacts=1, constraints=4)


def capacity_for(robot: str) -> Capacity:
    """The default contact/constraint capacity of a robot's scenes ("h1", "h1hand"); see CAPACITIES."""
    if robot not in CAPACITIES:
        raise ValueError(f"no capacity for robot {robot!r}; known: {', '.join(CAPACITIES)}")
    return CAPACITIES[robot]


# --- HumanoidBench: 14 tasks for each robot ------------------------------------------------------------
# h1: H1 with 19 position actuators; h1hand: H1 plus two Shadow hands, 61 actuators. Both robots have
# every task (HumanoidBench ships the scenes for both), with the same reward, termination, hooks and
# success bar (HumanoidBench's ``success_bar`` class attributes); only the capacity is the robot's.
HUMANOIDBENCH_ROBOTS = ("h1", "h1hand")


def _hb(reward, terminate, success_bar: float, *, reset=hb.unchanged_pose, observation=hb.qpos_qvel,
        obs_extra_dim: int = 0, constants=None, initial_state=None, reset_state=None,
        kinematics_after_reset: bool = False) -> dict:
    """One row of ``_HUMANOIDBENCH_TASKS``: a task's facts, the family's shared reset and observation unless
    given."""
    return dict(reward=reward, terminate=terminate, success_bar=success_bar, reset=reset, observation=observation,
                obs_extra_dim=obs_extra_dim, constants=constants, initial_state=initial_state,
                reset_state=reset_state, kinematics_after_reset=kinematics_after_reset)


# HumanoidBench's hard-set order; the first nine are the medium set.
_HUMANOIDBENCH_TASKS = {
    "stand": _hb(hb.locomotion_reward(0, 0.9, False), hb.fell, 800.0),
    "walk": _hb(hb.locomotion_reward(hb.WALK_SPEED, 0.9, False), hb.fell, 700.0),
    "run": _hb(hb.locomotion_reward(hb.RUN_SPEED, 0.9, False), hb.fell, 700.0),
    "stair": _hb(hb.locomotion_reward(hb.WALK_SPEED, 0.5, True), hb.tipped_over, 700.0),
    "crawl": _hb(hb.crawl_reward, hb.never_terminates, 700.0),
    "pole": _hb(hb.pole_reward, hb.root_below(0.5), 700.0, constants=hb.pole_constants),
    "slide": _hb(hb.locomotion_reward(hb.WALK_SPEED, 0.5, True), hb.tipped_over, 700.0),
    "hurdle": _hb(hb.hurdle_reward, hb.fell, 700.0, constants=hb.hurdle_constants),
    "maze": _hb(hb.maze_reward, hb.fell, 1200.0, constants=hb.maze_constants, initial_state=hb.maze_initial_state),
    "sit_simple": _hb(hb.sit_reward("sit_simple"), hb.root_below(0.5), 750.0),
    "sit_hard": _hb(hb.sit_reward("sit_hard"), hb.root_below(0.5), 750.0, reset=hb.sit_hard_pose),
    "balance_simple": _hb(hb.balance_reward("balance_simple"), hb.balance_terminated("balance_simple"), 800.0,
                          constants=hb.balance_constants),
    "balance_hard": _hb(hb.balance_reward("balance_hard"), hb.balance_terminated("balance_hard"), 800.0,
                        constants=hb.balance_constants),
    "reach": _hb(hb.reach_reward, hb.never_terminates, 12000.0, observation=hb.reach_observation, obs_extra_dim=6,
                 initial_state=hb.reach_initial_state, reset_state=hb.reach_goal, kinematics_after_reset=True),
}

# --- dm_control's cartpole on our own MJCF (cartpole_task) ---------------------------------------------
# Success bars: this project's learning-check targets (dm_control defines none).
_CARTPOLE_TASKS = {"balance": dict(reset=cp.balance_reset, success_bar=800.0),
                   "swingup": dict(reset=cp.swingup_reset, success_bar=600.0)}

#: Task id -> its spec: HumanoidBench robot by robot in task order, then cartpole.
TASKS: dict[str, TaskSpec] = {str(spec.task_id): spec for spec in (
    *(HumanoidBenchSpec(robot=robot, name=name, family=HUMANOIDBENCH, mjcf=None, capacity=capacity_for(robot),
                        time_limit=hb.TIME_LIMIT, **facts)
      for robot in HUMANOIDBENCH_ROBOTS for name, facts in _HUMANOIDBENCH_TASKS.items()),
    *(TaskSpec(robot="cartpole", name=name, family=CARTPOLE, mjcf=cp.CARTPOLE_XML, reward=cp.cartpole_reward,
               terminate=cp.never_terminates, observation=cp.cartpole_observation, capacity=CARTPOLE_CAPACITY,
               time_limit=cp.TIME_LIMIT, **facts)
      for name, facts in _CARTPOLE_TASKS.items()))}


# --- the task-id parser -------------------------------------------------------------------------------
def parse_task_id(task_id: str) -> TaskId:
    """"h1-walk", "h1hand-reach" or HumanoidBench's registered "h1-walk-v0" -> TaskId; unknown ids list the
    valid ones."""
    return task_spec(task_id).task_id


def task_spec(task_id: str) -> TaskSpec:
    """The spec of a task id ("h1-walk", "h1-walk-v0", "cartpole-swingup"); ValueError for an unknown id
    (listing the valid ones), TypeError for a non-string."""
    if not isinstance(task_id, str):
        raise TypeError(f"task id must be a string such as 'h1-walk', got {type(task_id).__name__}")
    spec = TASKS.get(task_id.removesuffix(_GYM_SUFFIX))
    if spec is None:
        raise ValueError(f"unknown task {task_id!r}; valid ids (a trailing {_GYM_SUFFIX!r} is accepted): "
                         + ", ".join(valid_task_ids()))
    return spec


def valid_task_ids() -> list[str]:
    """Every task id, robot by robot in task order ("h1-stand", ..., "h1hand-reach", "cartpole-...")."""
    return list(TASKS)


# --- task sets and success bars -----------------------------------------------------------------------
#: The 14 hard-set task names (without robot), in HumanoidBench's order.
HARD_TASKS: tuple[str, ...] = tuple(_HUMANOIDBENCH_TASKS)
# EZ-M's hard set (robot h1hand, HARD_TASKS: the task table's order) is the medium set (robot h1) plus
# HumanoidBench's sit, balance and reach tasks.
MEDIUM_TASKS = HARD_TASKS[:9]
CARTPOLE_TASKS = tuple(_CARTPOLE_TASKS)  # dm_control's cartpole on our own MJCF (cartpole_task)

# EZ-M's task sets (medium: obs 51, 19 actions; hard: obs 177, 61 actions) and the cheap CPU learning check.
TASK_SETS = {"medium": tuple(str(TaskId("h1", task)) for task in MEDIUM_TASKS),
             "hard": tuple(str(TaskId("h1hand", task)) for task in HARD_TASKS),
             "cartpole": tuple(str(TaskId("cartpole", task)) for task in CARTPOLE_TASKS)}

# Success bars by HumanoidBench task name (the same for h1 and h1hand) and by cartpole task id: the form
# ``ezm_gpu.plot`` looks them up in. ``success_bar`` takes any task id.
SUCCESS_BARS = {**{name: facts["success_bar"] for name, facts in _HUMANOIDBENCH_TASKS.items()},
                **{str(spec.task_id): spec.success_bar for spec in TASKS.values() if spec.family == CARTPOLE}}


def success_bar(task: str) -> float:
    """The success bar of a task id ("h1-walk", "h1hand-walk-v0", "cartpole-swingup")."""
    try:
        return task_spec(task).success_bar
    except ValueError:
        raise ValueError(f"no success bar for task {task!r}; known: {', '.join(SUCCESS_BARS)}") from None
