"""HumanoidBench's tasks as pure, batched torch functions: rewards, terminations, per-model constants,
task state, and the few task-specific resets and observations.

Every reward and termination maps a batch of named physics quantities (one row per world, leading
dimension ``W``) to tensors; nothing reads MuJoCo or MuJoCo-Warp, so the same code serves any physics
backend and can be checked exactly against recordings of the original (``tests/test_envs_rewards.py``).
Nothing here knows task ids: ``registry.TASKS`` names, for each task, which of these functions it uses,
and ``rewards`` looks them up by id.

Formulas follow HumanoidBench (commit ``791405f5eacf879adbc99105adb3fee73f5a49fc``,
``humanoid_bench/envs/{basic_locomotion_envs,pole,maze,balance,reach}.py``) built on dm_control's
``rewards.tolerance``: the 14 hard-set tasks (the medium-set locomotion tasks ``stand, walk, run, stair,
crawl, pole, slide, hurdle, maze`` plus ``sit_simple, sit_hard, balance_simple, balance_hard, reach``)
for the robots ``h1`` and ``h1hand`` (the formulas do not depend on the robot; only the geom ids of the
contact terms do, and those come from geom names).

Timing: HumanoidBench evaluates rewards right after ``mj_step``. ``qpos``/``qvel`` are then the
post-step values, while every derived quantity (site/body poses, sensors, actuator forces, contacts)
is from the forward pass of the last substep. Fill :class:`RewardInputs` accordingly (read MuJoCo-Warp
data after the last substep without an extra forward).

No reward or termination performs a host synchronisation (no ``.item()``, Python ``bool`` of a tensor,
``nonzero``...), so they can run inside a captured CUDA graph. Only the ``*_constants`` builders touch
host data; they run once per task model.

The reset and observation hooks at the end take the ``HumanoidBenchEnv`` they extend (duck-typed: this
module imports no env).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .tolerance import tolerance

__all__ = [
    "RewardInputs", "TaskConstants", "RewardFn", "TerminateFn", "tolerance", "small_control", "stand_terms",
    "forward_move", "contact_touches", "maze_update_stage", "maze_move_direction", "crawl_pelvis_orientation",
    "balance_contact_fail", "locomotion_reward", "hurdle_reward", "pole_reward", "crawl_reward", "maze_reward",
    "sit_reward", "balance_reward", "reach_reward", "root_below", "fell", "tipped_over", "never_terminates",
    "balance_terminated", "hurdle_constants", "pole_constants", "maze_constants", "balance_constants",
    "maze_initial_state", "reach_initial_state", "reset_state", "unchanged_pose", "sit_hard_pose", "reach_goal",
    "qpos_qvel", "reach_observation", "yaw_quaternion", "TIME_LIMIT",
]

TIME_LIMIT = 1000  # HumanoidBench's max_episode_steps
# HumanoidBench's constants (h1/h1hand values; HumanoidBench changes them only for the g1 robot).
STAND_HEIGHT = 1.65
CRAWL_HEIGHT = 0.8
WALK_SPEED = 1.0
RUN_SPEED = 5.0
POLE_SPEED = 0.5
MAZE_SPEED = 2.0
MAZE_CHECKPOINTS = ((0.0, 0.0, 1.0), (3.0, 0.0, 1.0), (3.0, 6.0, 1.0), (6.0, 6.0, 1.0), (6.0, 6.0, 1.0))
MAZE_LAST_STAGE = len(MAZE_CHECKPOINTS) - 1
MAZE_CHECKPOINT_RADIUS = 0.4
# The contact discount HumanoidBench multiplies into hurdle/pole/maze rewards on an offending contact.
COLLISION_DISCOUNT = 0.1
# Balance: the head must be this high (m) for ``standing`` = 1 (the robot stands on a 0.37 m board).
BALANCE_HEAD_HEIGHT = STAND_HEIGHT + 0.37
# Reach: hand-to-goal distances (m) below which the close / success bonuses are paid, and the bonuses.
REACH_CLOSE_DIST = 1.0
REACH_SUCCESS_DIST = 0.05
REACH_CLOSE_BONUS = 5.0
REACH_SUCCESS_BONUS = 10.0


@dataclasses.dataclass
class RewardInputs:
    """Physics quantities the rewards read, one row per world. All floats share one dtype/device.

    Lengths in metres, velocities in m/s, forces in N or N·m, world frame (z up). "Last substep"
    means the value from the forward pass at the start of the step's last physics substep (what
    ``MjData`` holds right after ``mj_step``); "post-step" means the integrated state.

    Attributes:
        head_z: [W] z of site ``head`` (last substep).
        left_foot_z: [W] z of site ``left_foot`` (last substep).
        right_foot_z: [W] z of site ``right_foot`` (last substep).
        torso_upright: [W] zz entry of body ``torso_link``'s rotation matrix, cos of its tilt (last
            substep).
        com_velocity: [W, 3] sensor ``pelvis_subtreelinvel`` (= ``sensordata[2:5]``), linear velocity
            of the pelvis subtree's centre of mass (last substep).
        actuator_force: [W, nu] ``actuator_force`` (last substep).
        pelvis_xpos: [W, 3] position of body ``pelvis`` (last substep).
        pelvis_xquat: [W, 4] orientation (w, x, y, z) of body ``pelvis`` (last substep).
        imu_xpos: [W, 3] position of site ``imu`` (last substep).
        qpos: [W, nq] joint positions (post-step); ``qpos[:, 2]`` is the root height.
        qvel: [W, nv] joint velocities (post-step); unused by the medium-set tasks, kept so one input
            type serves every HumanoidBench task.
        contact_geom: [W, C, 2] integer geom id pairs of the active contacts (last substep), padded
            with -1 where a world has fewer than C contacts.
        left_hand_xpos: [W, 3] position of site ``left_hand`` (last substep), or None; needed by reach.
        pelvis_upright: [W] zz entry of body 1's (``pelvis``) rotation matrix (last substep), or None;
            needed by reach (``healthy_reward = 5 * pelvis_upright``).
        chair_xpos: [W, 3] position of body ``chair`` (last substep), or None; needed by sit_simple and
            sit_hard.
    """

    head_z: Tensor
    left_foot_z: Tensor
    right_foot_z: Tensor
    torso_upright: Tensor
    com_velocity: Tensor
    actuator_force: Tensor
    pelvis_xpos: Tensor
    pelvis_xquat: Tensor
    imu_xpos: Tensor
    qpos: Tensor
    qvel: Tensor
    contact_geom: Tensor
    left_hand_xpos: Tensor | None = None
    pelvis_upright: Tensor | None = None
    chair_xpos: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class TaskConstants:
    """Per-task-model constants, built once on the host by :func:`task_constants`.

    Attributes:
        contact_geoms: [ngeom] bool, or None. The geom set a contact must touch to trigger the task's
            collision discount (hurdle: the three barrier collision geoms; pole: the ``pole_r*``
            geoms; maze: every geom from ``block_collision_00`` on). A membership mask rather than an
            id list so the lookup costs O(contacts), not O(contacts x set size).
        contact_exclude: [ngeom] bool, or None. A contact touching this set never triggers the
            discount (pole: geom 0, the floor).
        maze_checkpoints: [5, 3] float, or None. Maze checkpoint positions indexed by stage (m).
        sphere_geoms: [ngeom] bool, or None. Balance: geom ``pivot_sphere_collision``.
        board_geoms: [ngeom] bool, or None. Balance: geom ``stand_board_collision``.
        floor_geoms: [ngeom] bool, or None. Balance: geom id 0, the floor (HumanoidBench uses the id
            literally).
    """

    contact_geoms: Tensor | None = None
    contact_exclude: Tensor | None = None
    maze_checkpoints: Tensor | None = None
    sphere_geoms: Tensor | None = None
    board_geoms: Tensor | None = None
    floor_geoms: Tensor | None = None


# A task's reward: (inputs, constants, state) -> (reward [W], terms {HumanoidBench's info name: [W]}, new state).
RewardFn = Callable[[RewardInputs, TaskConstants, Mapping[str, Tensor]],
                    "tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]"]
# A task's termination: (inputs, constants) -> terminated [W] bool.
TerminateFn = Callable[[RewardInputs, TaskConstants], Tensor]


# ----------------------------------------------------------------------------------------------
# Shared terms
# ----------------------------------------------------------------------------------------------

def small_control(actuator_force: Tensor) -> Tensor:
    """HumanoidBench's ``small_control`` in [0.8, 1]. actuator_force: [W, nu] (N·m). Returns [W]."""
    per_actuator = tolerance(actuator_force, margin=10, value_at_margin=0, sigmoid="quadratic")
    return (4 + per_actuator.mean(dim=-1)) / 5


def stand_terms(inputs: RewardInputs, upright_bound: float, feet_relative: bool = False,
                head_height: float = STAND_HEIGHT) -> tuple[Tensor, Tensor, Tensor]:
    """``standing``, ``upright`` and ``stand_reward = standing * upright``, each [W] in [0, 1].

    Args:
        inputs: uses ``head_z`` (and the foot heights when ``feet_relative``) and ``torso_upright``.
        upright_bound: torso ``upright`` value from which the term is 1 (0.9 most tasks, 0.8 hurdle,
            0.5 stair/slide).
        feet_relative: stair/slide measure head height above each foot (terrain is not flat) instead
            of above the ground.
        head_height: head height (m) from which ``standing`` is 1 when not ``feet_relative``
            (``STAND_HEIGHT``; balance: ``BALANCE_HEAD_HEIGHT``). The margin stays ``STAND_HEIGHT / 4``.
    """
    if feet_relative:
        standing = (tolerance(inputs.head_z - inputs.left_foot_z, bounds=(1.2, math.inf), margin=0.45)
                    * tolerance(inputs.head_z - inputs.right_foot_z, bounds=(1.2, math.inf), margin=0.45))
    else:
        standing = tolerance(inputs.head_z, bounds=(head_height, math.inf), margin=STAND_HEIGHT / 4)
    upright = tolerance(inputs.torso_upright, bounds=(upright_bound, math.inf), sigmoid="linear",
                        margin=1.9, value_at_margin=0)
    return standing, upright, standing * upright


def forward_move(vx: Tensor, speed: float) -> Tensor:
    """Forward-speed term in [1/6, 1]: 1 at ``vx >= speed`` (m/s), linear down to 1/6 at ``vx <= 0``.

    vx: [W] centre-of-mass x velocity (m/s). Returns [W].
    """
    move = tolerance(vx, bounds=(speed, math.inf), margin=speed, value_at_margin=0, sigmoid="linear")
    return (5 * move + 1) / 6


def contact_touches(contact_geom: Tensor, geom_set: Tensor, exclude: Tensor | None = None) -> Tensor:
    """Whether any contact of a world has a geom in ``geom_set`` (and, per pair, none in ``exclude``).

    Args:
        contact_geom: [W, C, 2] int geom id pairs, -1 = no contact.
        geom_set: [ngeom] bool membership mask.
        exclude: [ngeom] bool mask or None; a pair with either geom in it does not count.

    Returns:
        [W] bool.
    """
    ngeom = geom_set.shape[0]
    valid = contact_geom >= 0
    # Padding points at an always-False slot appended to the masks (no data-dependent indexing).
    idx = torch.where(valid, contact_geom, torch.full_like(contact_geom, ngeom)).long()
    pad = torch.zeros(1, dtype=torch.bool, device=geom_set.device)
    hit = torch.cat([geom_set, pad])[idx].any(dim=-1)
    if exclude is not None:
        hit = hit & ~torch.cat([exclude, pad])[idx].any(dim=-1)
    return hit.any(dim=-1)


def _discount(hit: Tensor, like: Tensor) -> Tensor:
    """[W] bool -> [W] float: 0.1 where a penalised contact exists, else 1."""
    return torch.where(hit, torch.full_like(like, COLLISION_DISCOUNT), torch.ones_like(like))


def _below(x: Tensor, threshold: float) -> Tensor:
    return x < threshold



# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------

def _walk_family(inputs: RewardInputs, move_speed: float, upright_bound: float = 0.9,
                 feet_relative: bool = False) -> dict[str, Tensor]:
    """Terms of HumanoidBench's ``small_control * stand_reward * move`` tasks (move_speed 0 = stand)."""
    standing, upright, stand_reward = stand_terms(inputs, upright_bound, feet_relative)
    terms = {"small_control": small_control(inputs.actuator_force), "stand_reward": stand_reward,
             "standing": standing, "upright": upright}
    if move_speed == 0:
        terms["dont_move"] = _dont_move(inputs)
    else:
        terms["move"] = forward_move(inputs.com_velocity[:, 0], move_speed)
    return terms



def locomotion_reward(move_speed: float, upright_bound: float, feet_relative: bool) -> RewardFn:
    """stand/walk/run/stair/slide: reward = small_control * stand_reward * (move or dont_move)."""
    motion = "dont_move" if move_speed == 0 else "move"

    def task(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
        terms = _walk_family(inputs, move_speed, upright_bound, feet_relative)
        reward = terms["small_control"] * terms["stand_reward"] * terms[motion]
        terms["per_timestep_reward"] = reward
        return reward, terms, dict(state)

    return task


def hurdle_reward(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
    terms = _walk_family(inputs, RUN_SPEED, upright_bound=0.8)
    terms["wall_collision_discount"] = _discount(
        contact_touches(inputs.contact_geom, _need(consts.contact_geoms, "hurdle")), inputs.head_z)
    reward = terms["small_control"] * terms["stand_reward"] * terms["move"] * terms["wall_collision_discount"]
    terms["per_timestep_reward"] = reward
    return reward, terms, dict(state)


def pole_reward(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
    terms = _walk_family(inputs, POLE_SPEED)
    terms["collision_discount"] = _discount(
        contact_touches(inputs.contact_geom, _need(consts.contact_geoms, "pole"), consts.contact_exclude),
        inputs.head_z)
    reward = (0.5 * (terms["small_control"] * terms["stand_reward"]) + 0.5 * terms["move"]) \
        * terms["collision_discount"]
    terms["per_timestep_reward"] = reward
    return reward, terms, dict(state)


def crawl_pelvis_orientation(pelvis_xquat: Tensor) -> Tensor:
    """Crawl's pelvis-orientation term (not in HumanoidBench's info). pelvis_xquat: [W, 4]. Returns [W]."""
    # Target (0.75, 0, 0.65, 0) applied per component: no host-built constant tensor (graph capture).
    q = pelvis_xquat
    diff = torch.stack([q[:, 0] - 0.75, q[:, 1], q[:, 2] - 0.65, q[:, 3]], dim=-1)
    return tolerance(torch.linalg.vector_norm(diff, dim=-1), margin=1)


def crawl_reward(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
    sc = small_control(inputs.actuator_force)
    move = forward_move(inputs.com_velocity[:, 0], WALK_SPEED)
    band = (CRAWL_HEIGHT - 0.2, CRAWL_HEIGHT + 0.2)
    crawling_head = tolerance(inputs.head_z, bounds=band, margin=1)
    crawling = tolerance(inputs.imu_xpos[:, 2], bounds=band, margin=1)
    in_tunnel = tolerance(inputs.imu_xpos[:, 1], bounds=(-1, 1), margin=0)
    reward = (0.1 * sc + 0.25 * torch.minimum(crawling, crawling_head) + 0.4 * move
              + 0.25 * crawl_pelvis_orientation(inputs.pelvis_xquat)) * in_tunnel
    terms = {"crawling": crawling, "crawling_head": crawling_head, "small_control": sc, "move": move,
             "in_tunnel": in_tunnel, "per_timestep_reward": reward}
    return reward, terms, dict(state)


def maze_move_direction(stage: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Target move direction of a maze stage. stage: [W] int. Returns [W, 3] unit vectors.

    HumanoidBench keeps the direction as separate state, but it only changes on a stage transition
    and always to the same value for a given new stage (+x for stages 0, 1, 3; +y for 2, 4).
    """
    along_y = ((stage == 2) | (stage == 4)).to(dtype)
    return torch.stack([1 - along_y, along_y, torch.zeros_like(along_y)], dim=-1)


def maze_update_stage(stage: Tensor, pelvis_xpos: Tensor, checkpoints: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Advance the maze stage when the pelvis is within 0.4 m (xy) of the current checkpoint.

    Args:
        stage: [W] int, the stage before this step (0 after reset).
        pelvis_xpos: [W, 3] pelvis position (m, last substep).
        checkpoints: [5, 3] checkpoint positions (m), indexed by stage.

    Returns:
        new_stage [W] (same dtype as ``stage``, capped at 4), move_direction [W, 3],
        stage_convert_reward [W] (100 x new stage on a transition, else 0).
    """
    dist = torch.linalg.vector_norm(pelvis_xpos[:, :2] - checkpoints[stage.long(), :2], dim=-1)
    reached = dist < MAZE_CHECKPOINT_RADIUS
    new_stage = torch.where(reached, torch.clamp(stage + 1, max=MAZE_LAST_STAGE), stage)
    bonus = torch.where(new_stage > stage, 100 * new_stage.to(pelvis_xpos.dtype), torch.zeros_like(dist))
    return new_stage, maze_move_direction(new_stage, pelvis_xpos.dtype), bonus


def maze_reward(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
    checkpoints = _need(consts.maze_checkpoints, "maze").to(inputs.head_z.dtype)
    if "maze_stage" not in state:
        raise ValueError("maze needs state['maze_stage'] (see initial_state)")
    _, _, stand_reward = stand_terms(inputs, 0.9)
    sc = small_control(inputs.actuator_force)
    discount = _discount(contact_touches(inputs.contact_geom, _need(consts.contact_geoms, "maze")),
                         inputs.head_z)
    stage, direction, bonus = maze_update_stage(state["maze_stage"], inputs.pelvis_xpos, checkpoints)
    v = inputs.com_velocity
    move = (tolerance(v[:, 0] - direction[:, 0] * MAZE_SPEED, margin=1, value_at_margin=0, sigmoid="linear")
            * tolerance(v[:, 1] - direction[:, 1] * MAZE_SPEED, margin=1, value_at_margin=0, sigmoid="linear"))
    move = torch.where(stage == MAZE_LAST_STAGE, torch.ones_like(move), move)
    move = (5 * move + 1) / 6
    proximity = tolerance(
        torch.linalg.vector_norm(checkpoints[stage.long(), :2] - inputs.imu_xpos[:, :2], dim=-1), margin=1)
    reward = (0.2 * (stand_reward * sc) + 0.4 * move + 0.4 * proximity) * discount + bonus
    terms = {"stand_reward": stand_reward, "small_control": sc, "move": move,
             "wall_collision_discount": discount, "stage_convert_reward": bonus,
             "checkpoint_proximity_reward": proximity, "success_subtasks": stage.to(reward.dtype),
             "per_timestep_reward": reward}
    new_state = dict(state)
    new_state["maze_stage"] = stage
    new_state["move_direction"] = direction
    return reward, terms, new_state


def _dont_move(inputs: RewardInputs) -> Tensor:
    """Stand/sit/balance ``dont_move`` in [0, 1]: gaussian of the horizontal CoM speed (m/s). Returns [W]."""
    return tolerance(inputs.com_velocity[:, :2], margin=2).mean(dim=-1)


def sit_reward(task: str) -> RewardFn:
    """sit_simple / sit_hard (same reward; sit_hard only differs by its reset and free chair).

    reward = small_control * sit_reward * dont_move, sit_reward = (sitting + on_chair) / 2 * upright *
    sitting_posture (termination: ``root_below(0.5)``).
    """

    def sit(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
        chair = _need_input(inputs.chair_xpos, "chair_xpos", task)
        root = inputs.qpos
        sitting = tolerance(root[:, 2], bounds=(0.68, 0.72), margin=0.2)
        # Root xy (post-step) relative to the chair body (last substep), as HumanoidBench mixes them.
        on_chair = (tolerance(root[:, 0] - chair[:, 0], bounds=(-0.19, 0.19), margin=0.2)
                    * tolerance(root[:, 1] - chair[:, 1], margin=0.1))
        sitting_posture = tolerance(inputs.head_z - inputs.imu_xpos[:, 2], bounds=(0.35, 0.45), margin=0.3)
        upright = tolerance(inputs.torso_upright, bounds=(0.95, math.inf), sigmoid="linear", margin=0.9,
                            value_at_margin=0)
        sit_term = (0.5 * sitting + 0.5 * on_chair) * upright * sitting_posture
        sc = small_control(inputs.actuator_force)
        dont_move = _dont_move(inputs)
        reward = sc * sit_term * dont_move
        terms = {"small_control": sc, "sit_reward": sit_term, "dont_move": dont_move, "sitting": sitting,
                 "upright": upright, "sitting_posture": sitting_posture, "per_timestep_reward": reward}
        return reward, terms, dict(state)

    return sit


def balance_contact_fail(contact_geom: Tensor, sphere: Tensor, board: Tensor, floor: Tensor) -> Tensor:
    """Balance's contact termination: the pivot sphere touches anything but floor/board, or the floor
    touches anything but the sphere (e.g. a foot or the board).

    Args:
        contact_geom: [W, C, 2] int geom id pairs (last substep), -1 = no contact.
        sphere, board, floor: [ngeom] bool masks of ``pivot_sphere_collision``,
            ``stand_board_collision`` and the floor (geom 0), from :func:`balance_constants`.

    Returns:
        [W] bool.
    """
    return (contact_touches(contact_geom, sphere, floor | board)
            | contact_touches(contact_geom, floor, sphere))


def balance_reward(task: str) -> RewardFn:
    """balance_simple / balance_hard (same reward and termination; the hard scene's pivot rolls).

    reward = small_control * stand_reward * dont_move with the head bound raised by the 0.37 m board
    (termination: :func:`balance_terminated`).
    """

    def balance(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
        standing, upright, stand_reward = stand_terms(inputs, 0.9, head_height=BALANCE_HEAD_HEIGHT)
        sc = small_control(inputs.actuator_force)
        dont_move = _dont_move(inputs)
        reward = sc * stand_reward * dont_move
        terms = {"small_control": sc, "stand_reward": stand_reward, "dont_move": dont_move,
                 "standing": standing, "upright": upright, "per_timestep_reward": reward}
        return reward, terms, dict(state)

    return balance


def reach_reward(inputs: RewardInputs, consts: TaskConstants, state: Mapping[str, Tensor]):
    """reach: healthy_reward - 1e-4 * motion_penalty + reward_close + reward_success (never terminates).

    ``motion_penalty`` sums the squared post-step ``qvel`` (the robot is the whole reach model, so this
    is HumanoidBench's ``qvel[:dof - 1]``); the goal is ``state["reach_goal"]`` [W, 3] (m).
    """
    hand = _need_input(inputs.left_hand_xpos, "left_hand_xpos", "reach")
    pelvis_upright = _need_input(inputs.pelvis_upright, "pelvis_upright", "reach")
    if "reach_goal" not in state:
        raise ValueError("reach needs state['reach_goal'] (see initial_state)")
    hand_dist = torch.linalg.vector_norm(hand - state["reach_goal"].to(hand.dtype), dim=-1)
    healthy_reward = 5.0 * pelvis_upright
    motion_penalty = inputs.qvel.square().sum(dim=-1)
    zero = torch.zeros_like(hand_dist)
    reward_close = torch.where(hand_dist < REACH_CLOSE_DIST, zero + REACH_CLOSE_BONUS, zero)
    reward_success = torch.where(hand_dist < REACH_SUCCESS_DIST, zero + REACH_SUCCESS_BONUS, zero)
    reward = healthy_reward - 0.0001 * motion_penalty + reward_close + reward_success
    terms = {"hand_dist": hand_dist, "healthy_reward": healthy_reward, "motion_penalty": motion_penalty,
             "reward_close": reward_close, "reward_success": reward_success, "per_timestep_reward": reward}
    return reward, terms, dict(state)


def _need(x: Tensor | None, task: str) -> Tensor:
    if x is None:
        raise ValueError(f"{task} needs TaskConstants from task_constants({task!r}, geom_names)")
    return x


def _need_input(x: Tensor | None, field: str, task: str) -> Tensor:
    if x is None:
        raise ValueError(f"{task} needs RewardInputs.{field} (it is None)")
    return x


# ----------------------------------------------------------------------------------------------
# Terminations
# ----------------------------------------------------------------------------------------------

def root_below(height: float) -> TerminateFn:
    """Terminated where the post-step root height ``qpos[:, 2]`` is below ``height`` (m)."""

    def terminate(inputs: RewardInputs, consts: TaskConstants) -> Tensor:
        return _below(inputs.qpos[:, 2], height)

    return terminate


#: stand, walk, run, hurdle, maze: the robot fell (root below 0.2 m).
fell = root_below(0.2)


def tipped_over(inputs: RewardInputs, consts: TaskConstants) -> Tensor:
    """stair, slide: the torso tilted past ``upright`` 0.1 (their terrain changes the root height, so
    HumanoidBench terminates on torso tilt instead)."""
    return _below(inputs.torso_upright, 0.1)


def never_terminates(inputs: RewardInputs, consts: TaskConstants) -> Tensor:
    """crawl, reach: [W] False."""
    return torch.zeros_like(inputs.head_z, dtype=torch.bool)


def balance_terminated(task: str) -> TerminateFn:
    """balance_simple / balance_hard: the post-step root height is below 0.8 m, or
    :func:`balance_contact_fail`."""

    def terminate(inputs: RewardInputs, consts: TaskConstants) -> Tensor:
        contact = balance_contact_fail(inputs.contact_geom, _need(consts.sphere_geoms, task),
                                       _need(consts.board_geoms, task), _need(consts.floor_geoms, task))
        return _below(inputs.qpos[:, 2], 0.8) | contact

    return terminate


# ----------------------------------------------------------------------------------------------
# Per-model constants (host side, once per model) and task state
# ----------------------------------------------------------------------------------------------
# A builder: (task, geom names in id order, device, dtype) -> TaskConstants; ``task`` (the id the caller
# gave) only names the task in errors; ``dtype`` applies to the maze checkpoints.

def _geom_mask(names: Sequence[str], ids: Sequence[int], device) -> Tensor:
    """[ngeom] bool, True at ``ids``."""
    m = torch.zeros(len(names), dtype=torch.bool)
    m[list(ids)] = True
    return m.to(device)


def _geom_index(task: str, names: Sequence[str], name: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise ValueError(f"{task}: geom {name!r} not in the model's geom names") from None


def hurdle_constants(task: str, names: list[str], device, dtype: torch.dtype) -> TaskConstants:
    """hurdle: the three barrier collision geoms."""
    walls = [_geom_index(task, names, n) for n in ("left_barrier_collision", "right_barrier_collision",
                                                    "behind_barrier_collision")]
    return TaskConstants(contact_geoms=_geom_mask(names, walls, device))


def pole_constants(task: str, names: list[str], device, dtype: torch.dtype) -> TaskConstants:
    """pole: the ``pole_r*`` geoms; contacts with geom 0 (the floor) do not count."""
    poles = [i for i, n in enumerate(names) if "pole_r" in n]
    # HumanoidBench ignores contacts that involve geom id 0 (the floor) literally by id.
    return TaskConstants(contact_geoms=_geom_mask(names, poles, device), contact_exclude=_geom_mask(names, [0], device))


def balance_constants(task: str, names: list[str], device, dtype: torch.dtype) -> TaskConstants:
    """balance_simple / balance_hard: the pivot sphere, the board and the floor (geom 0)."""
    return TaskConstants(sphere_geoms=_geom_mask(names, [_geom_index(task, names, "pivot_sphere_collision")], device),
                         board_geoms=_geom_mask(names, [_geom_index(task, names, "stand_board_collision")], device),
                         floor_geoms=_geom_mask(names, [0], device))


def maze_constants(task: str, names: list[str], device, dtype: torch.dtype) -> TaskConstants:
    """maze: every geom from the first wall block on (HumanoidBench treats them all as walls), and the
    checkpoints."""
    first_wall = _geom_index(task, names, "block_collision_00")
    return TaskConstants(contact_geoms=_geom_mask(names, range(first_wall, len(names)), device),
                         maze_checkpoints=torch.tensor(MAZE_CHECKPOINTS, dtype=dtype, device=device))


def maze_initial_state(num_worlds: int, device, dtype: torch.dtype) -> dict[str, Tensor]:
    """maze after reset: ``maze_stage`` [W] int64 = 0, ``move_direction`` [W, 3] = +x."""
    stage = torch.zeros(num_worlds, dtype=torch.int64, device=device)
    return {"maze_stage": stage, "move_direction": maze_move_direction(stage, dtype)}


def reach_initial_state(num_worlds: int, device, dtype: torch.dtype) -> dict[str, Tensor]:
    """reach after reset: ``reach_goal`` [W, 3] = 0 (m, world frame; the env draws the goals and writes them
    here, :func:`reach_goal`)."""
    return {"reach_goal": torch.zeros(num_worlds, 3, dtype=dtype, device=device)}


def reset_state(state: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    """Reset the task state of the worlds where ``mask`` ([W] bool) is True; no host sync.

    ``reach_goal`` is passed through unchanged: goals are random, so the caller overwrites the rows of
    reset worlds itself."""
    out = dict(state)
    if "maze_stage" in state:
        stage = torch.where(mask, torch.zeros_like(state["maze_stage"]), state["maze_stage"])
        out["maze_stage"] = stage
        out["move_direction"] = maze_move_direction(stage, state["move_direction"].dtype)
    return out



# ----------------------------------------------------------------------------------------------
# Resets and observations
# ----------------------------------------------------------------------------------------------
# HumanoidBench's tasks share the reset (keyframe 0 + U(-0.01, 0.01) on qpos, zero qvel) and the
# observation (qpos ⊕ qvel); sit_hard redraws the robot's pose and reach draws a goal and observes it.
# A reset hook: (env, qpos [W, nq] keyframe + noise) -> qpos [W, nq]; an observation: (env) -> [W, obs_dim].

SIT_HARD_X = (0.2, 0.4)  # sit_hard's reset: robot x, y (m) and yaw (rad) ranges, uniform
SIT_HARD_Y = (-0.15, 0.15)
SIT_HARD_YAW = (-1.8, 1.8)
REACH_GOAL_LOW, REACH_GOAL_HIGH = (-2.0, -2.0, 0.2), (2.0, 2.0, 2.0)  # reach's goal box (m), uniform


def yaw_quaternion(yaw: torch.Tensor) -> torch.Tensor:
    """[W] yaw (rad) -> [W, 4] unit quaternion (w, x, y, z) of that rotation about z: HumanoidBench's
    ``euler_to_quat((0, 0, yaw))`` = (cos(yaw/2), 0, 0, sin(yaw/2))."""
    zero = torch.zeros_like(yaw)
    return torch.stack([torch.cos(yaw / 2), zero, zero, torch.sin(yaw / 2)], dim=1)


def sit_hard_pose(env, qpos: torch.Tensor) -> torch.Tensor:
    """sit_hard: after keyframe + noise, the robot's x, y and yaw are redrawn (HumanoidBench's
    ``SitHard.reset_model``); the root quaternion becomes yaw-only. qpos [W, nq] -> [W, nq]."""
    ranges = (SIT_HARD_X, SIT_HARD_Y, SIT_HARD_YAW)
    x, y, yaw = env._uniform("sit_hard_pose", [r[0] for r in ranges], [r[1] for r in ranges]).unbind(1)
    qpos = qpos.clone()
    qpos[:, 0], qpos[:, 1], qpos[:, 3:7] = x, y, yaw_quaternion(yaw)
    return qpos


def reach_goal(env, mask: torch.Tensor) -> None:
    """reach: a new goal U(REACH_GOAL_LOW, REACH_GOAL_HIGH) for the worlds where mask [W] is True
    (``state["reach_goal"]`` [W, 3]; HumanoidBench's ``Reach.reset_model``)."""
    goal = env._uniform("reach_goal", REACH_GOAL_LOW, REACH_GOAL_HIGH)
    env.state["reach_goal"] = torch.where(mask[:, None], goal, env.state["reach_goal"])


def unchanged_pose(env, qpos: torch.Tensor) -> torch.Tensor:
    """Every task but sit_hard: the keyframe + noise draw as it is, qpos [W, nq]."""
    return qpos


def qpos_qvel(env) -> torch.Tensor:
    """Every task but reach: qpos ⊕ qvel, [W, nq + nv] float32 (a copy)."""
    return torch.cat([env._qpos, env._qvel], dim=1)


def reach_observation(env) -> torch.Tensor:
    """reach: qpos ⊕ qvel ⊕ left hand site position ⊕ goal, [W, nq + nv + 6] float32 (a copy)."""
    return torch.cat([env._qpos, env._qvel, env._site_xpos[:, env._readout_ids.left_hand], env.state["reach_goal"]],
                     dim=1)

