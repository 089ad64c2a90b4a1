"""dm_control's cartpole (balance, swingup): our MJCF of it, and its reward, observation and resets as
pure batched torch functions (the env is ``cartpole.CartpoleEnv``).

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
    θ ~ π + 0.01·N(0, 1); both: qvel ~ 0.01·N(0, 1). Drawn per world from
    ``RESET_DRAWS`` uniforms of the env's counter-based RNG (``base.hashed_uniform``; normals by
    Box-Muller), so a world's draw depends on (seed, world, reset count).
  - Reward (the smooth one, both tasks): ``upright · small_control · small_velocity · centered`` with
    upright = (cos θ + 1)/2, centered = (1 + tolerance(x, margin=2))/2,
    small_control = (4 + tolerance(u, margin=1, value_at_margin=0, sigmoid="quadratic"))/5,
    small_velocity = (1 + tolerance(θ̇, margin=5))/2; u is the (clipped) control.
"""
from __future__ import annotations

import math

import torch

from .tolerance import tolerance

__all__ = ["CARTPOLE_XML", "TIME_LIMIT", "RESET_DRAWS", "cartpole_reward", "cartpole_observation", "balance_reset",
           "swingup_reset", "never_terminates"]

TIME_LIMIT = 1000  # dm_control: 10 s at a control timestep of 0.01 s

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
RESET_DRAWS = 6  # uniforms per world and reset: cart, angle (balance), two normal pairs (swingup, qvel)


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
    centered = (1 + tolerance(cart_position, margin=2)) / 2
    small_control = (4 + tolerance(control, margin=1, value_at_margin=0, sigmoid="quadratic")) / 5
    small_velocity = (1 + tolerance(pole_angular_vel, margin=5)) / 2
    reward = upright * small_control * small_velocity * centered
    return reward, dict(upright=upright, centered=centered, small_control=small_control,
                        small_velocity=small_velocity)


def _normals(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent N(0, 1) from two U[0, 1) (Box-Muller; 1 - u1 in (0, 1] keeps the log finite)."""
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))
    return radius * torch.cos(2 * math.pi * u2), radius * torch.sin(2 * math.pi * u2)


def _velocity(u: torch.Tensor) -> torch.Tensor:
    """Both tasks' initial qvel [W, 2]: 0.01·N(0, 1) from the uniforms u [W, RESET_DRAWS] (columns 4, 5)."""
    n2, n3 = _normals(u[:, 4], u[:, 5])
    return VELOCITY_STD * torch.stack([n2, n3], dim=1)


def balance_reset(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """balance's reset from the uniforms u [W, RESET_DRAWS]: qpos [W, 2] (x ~ U(-0.1, 0.1),
    θ ~ U(-0.034, 0.034)), qvel [W, 2]."""
    qpos = torch.stack([BALANCE_CART_RANGE * (2 * u[:, 0] - 1), BALANCE_ANGLE_RANGE * (2 * u[:, 1] - 1)], dim=1)
    return qpos, _velocity(u)


def swingup_reset(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """swingup's reset from the uniforms u [W, RESET_DRAWS]: qpos [W, 2] (x ~ 0.01·N(0, 1),
    θ ~ π + 0.01·N(0, 1)), qvel [W, 2]."""
    n0, n1 = _normals(u[:, 2], u[:, 3])
    return torch.stack([SWINGUP_STD * n0, math.pi + SWINGUP_STD * n1], dim=1), _velocity(u)


def never_terminates(qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
    """Both tasks: [W] False (dm_control's cartpole never terminates)."""
    return torch.zeros(qpos.shape[0], dtype=torch.bool, device=qpos.device)
