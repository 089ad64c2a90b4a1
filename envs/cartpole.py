"""dm_control's cartpole (balance, swingup) as a cheap batched MuJoCo-Warp task, on our own MJCF.

The tasks exist so the training application can be shown to learn on a CPU. They follow the
published dm_control suite (``dm_control/suite/cartpole.py`` and ``cartpole.xml``) in semantics:

  - Model: a cart (box, 1 kg) on a slide joint along x (limited to ±1.8 m, soft limit solref
    (0.08, 1), damping 5e-4) carrying a pole (capsule of length 1 m, radius 0.045, 0.1 kg) on a hinge
    about y (damping 2e-6); one motor on the slider, gear 10, ctrlrange [-1, 1]; timestep 0.01 s,
    RK4, contacts disabled. Visual-only parts of the original (floor, rails, cameras, materials) are
    left out: with contacts disabled they do not affect the dynamics.
  - Control timestep 0.01 s (1 physics step per env step); episodes of 10 s = 1000 steps; never
    terminates.
  - Observation [W, 5]: ``position`` (cart x, cos θ, sin θ: the pole's xmat zz and xz) ⊕ ``velocity``
    (cart ẋ, pole θ̇), θ = 0 upright.
  - Reset. balance: x ~ U(-0.1, 0.1), θ ~ U(-0.034, 0.034); swingup: x ~ 0.01·N(0, 1),
    θ ~ π + 0.01·N(0, 1); both: qvel ~ 0.01·N(0, 1). Drawn per world from the env's counter-based RNG
    (``hashed_uniform``; normals by Box-Muller), so a world's draw depends on (seed, world, reset count).
  - Reward (the smooth one, both tasks): ``upright · small_control · small_velocity · centered`` with
    upright = (cos θ + 1)/2, centered = (1 + tolerance(x, margin=2))/2,
    small_control = (4 + tolerance(u, margin=1, value_at_margin=0, sigmoid="quadratic"))/5,
    small_velocity = (1 + tolerance(θ̇, margin=5))/2; u is the (clipped) control.
"""
from __future__ import annotations

import math

import mujoco
import torch

from . import rewards
from .device import DeviceLike
from .env import BatchedEnv, Capacity, hashed_uniform
from .scene import parse_task_id

__all__ = ["CARTPOLE_XML", "CartpoleEnv", "CARTPOLE_CAPACITY", "TIME_LIMIT", "cartpole_reward", "cartpole_observation"]

TIME_LIMIT = 1000  # dm_control: 10 s at a control timestep of 0.01 s
# No contacts (disabled); the slider's limit is the only constraint (at most 1 row per world).
CARTPOLE_CAPACITY = Capacity(contacts=1, constraints=4)

# Our MJCF, written to dm_control's cartpole semantics (see the module docstring).
CARTPOLE_XML = """
<mujoco model="ezm-cartpole">
  <option timestep="0.01" integrator="RK4">
    <flag contact="disable"/>
  </option>
  <worldbody>
    <body name="cart" pos="0 0 1">
      <joint name="slider" type="slide" axis="1 0 0" limited="true" range="-1.8 1.8"
             solreflimit="0.08 1" damping="5e-4"/>
      <geom name="cart" type="box" size="0.2 0.15 0.1" mass="1"/>
      <body name="pole_1">
        <joint name="hinge_1" type="hinge" axis="0 1 0" damping="2e-6"/>
        <geom name="pole_1" type="capsule" fromto="0 0 0 0 0 1" size="0.045" mass="0.1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="slide" joint="slider" gear="10" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""

# Reset ranges (dm_control's Balance.initialize_episode).
BALANCE_CART_RANGE = 0.1
BALANCE_ANGLE_RANGE = 0.034
SWINGUP_STD = 0.01
VELOCITY_STD = 0.01


def cartpole_observation(qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
    """[W, 5]: cart x, cos θ, sin θ, cart ẋ, pole θ̇ from qpos [W, 2], qvel [W, 2]."""
    angle = qpos[:, 1]
    return torch.stack([qpos[:, 0], torch.cos(angle), torch.sin(angle), qvel[:, 0], qvel[:, 1]], dim=1)


def cartpole_reward(cart_position: torch.Tensor, pole_cos: torch.Tensor, pole_angular_vel: torch.Tensor,
                    control: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """dm_control's smooth cartpole reward. All inputs [W] (control: the slider motor's ctrl).

    Returns reward [W] in [0, 1] and its factors {upright, centered, small_control, small_velocity}.
    """
    upright = (pole_cos + 1) / 2
    centered = (1 + rewards.tolerance(cart_position, margin=2)) / 2
    small_control = (4 + rewards.tolerance(control, margin=1, value_at_margin=0, sigmoid="quadratic")) / 5
    small_velocity = (1 + rewards.tolerance(pole_angular_vel, margin=5)) / 2
    reward = upright * small_control * small_velocity * centered
    return reward, dict(upright=upright, centered=centered, small_control=small_control,
                        small_velocity=small_velocity)


def _normals(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent N(0, 1) from two U[0, 1) (Box-Muller; 1 - u1 in (0, 1] keeps the log finite)."""
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))
    return radius * torch.cos(2 * math.pi * u2), radius * torch.sin(2 * math.pi * u2)


class CartpoleEnv(BatchedEnv):
    """``num_envs`` worlds of "cartpole-balance" or "cartpole-swingup" (see the module docstring).

    Same API as ``HumanoidBenchEnv`` (reset, step with auto-reset, info with the reward terms,
    validate, check, set_state); needs no assets. ``root`` is accepted and ignored so task sets
    can mix cartpole with HumanoidBench tasks; ``ignore_termination`` changes nothing (never terminates).
    """

    frame_skip = 1  # dm_control: control timestep = physics timestep = 0.01 s

    def __init__(self, task: str, num_envs: int, device: DeviceLike = None, seed: int = 0,
                 time_limit: int = TIME_LIMIT, ignore_termination: bool = False, root=None,
                 capacity: Capacity = CARTPOLE_CAPACITY):
        if parse_task_id(task).robot != "cartpole":
            raise ValueError(f"{task!r} is not a cartpole task; make it with ezm_gpu.envs.make")
        self.swing_up = parse_task_id(task).task == "swingup"
        super().__init__(task, num_envs, device=device, seed=seed, time_limit=time_limit,
                         ignore_termination=ignore_termination, capacity=capacity)

    def _load_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_string(CARTPOLE_XML)

    def _obs_dim(self) -> int:
        return 5

    def observation(self) -> torch.Tensor:
        """[W, 5]: cart x, cos θ, sin θ, cart ẋ, pole θ̇ (dm_control's position ⊕ velocity)."""
        return cartpole_observation(self._qpos, self._qvel)

    def _initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = hashed_uniform(self.seed, self._worlds, self._resets, 6, 0.0, 1.0)
        n0, n1 = _normals(u[:, 2], u[:, 3])
        n2, n3 = _normals(u[:, 4], u[:, 5])
        if self.swing_up:
            qpos = torch.stack([SWINGUP_STD * n0, math.pi + SWINGUP_STD * n1], dim=1)
        else:
            qpos = torch.stack([BALANCE_CART_RANGE * (2 * u[:, 0] - 1), BALANCE_ANGLE_RANGE * (2 * u[:, 1] - 1)],
                               dim=1)
        qvel = VELOCITY_STD * torch.stack([n2, n3], dim=1)
        return qpos, qvel

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        reward, terms = cartpole_reward(self._qpos[:, 0], torch.cos(self._qpos[:, 1]), self._qvel[:, 1],
                                        self._ctrl[:, 0])
        return reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device), terms
