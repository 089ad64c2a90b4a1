"""dm_control's cartpole (balance, swingup) as a cheap batched MuJoCo-Warp task: ``CartpoleEnv``.

The tasks exist so the training application can be shown to learn on a CPU; their semantics (model,
observation, resets, reward) are ``cartpole_task``'s docstring, and each task's facts its
``registry.TASKS`` entry. The names below ``CartpoleEnv`` are re-exported from there.
"""
from __future__ import annotations

import torch

from .base import BatchedEnv, hashed_uniform
from .cartpole_task import (BALANCE_ANGLE_RANGE, BALANCE_CART_RANGE, CARTPOLE_XML, RESET_DRAWS, SWINGUP_STD,
                            TIME_LIMIT, VELOCITY_STD, cartpole_observation, cartpole_reward)
from .registry import CARTPOLE, CARTPOLE_CAPACITY

__all__ = ["CARTPOLE_XML", "CartpoleEnv", "CARTPOLE_CAPACITY", "TIME_LIMIT", "cartpole_reward", "cartpole_observation",
           "BALANCE_CART_RANGE", "BALANCE_ANGLE_RANGE", "SWINGUP_STD", "VELOCITY_STD"]


class CartpoleEnv(BatchedEnv):
    """``num_envs`` worlds of "cartpole-balance" or "cartpole-swingup" (see ``cartpole_task``).

    Same API as ``HumanoidBenchEnv`` (reset, step with auto-reset, info with the reward terms,
    validate, check, set_state); needs no assets. ``root`` is accepted and ignored so task sets
    can mix cartpole with HumanoidBench tasks; ``ignore_termination`` changes nothing (never terminates).
    ``time_limit`` and ``capacity`` default to the spec's (1000 steps, ``CARTPOLE_CAPACITY``).
    """

    frame_skip = 1  # dm_control: control timestep = physics timestep = 0.01 s
    family = CARTPOLE

    def _obs_dim(self) -> int:
        return 5

    def observation(self) -> torch.Tensor:
        """[W, 5]: cart x, cos θ, sin θ, cart ẋ, pole θ̇ (dm_control's position ⊕ velocity)."""
        return self.spec.observation(self._qpos, self._qvel)

    def _initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's reset (balance / swingup) from RESET_DRAWS uniforms per world: qpos [W, 2], qvel [W, 2]."""
        return self.spec.reset(hashed_uniform(self.seed, self._worlds, self._resets, RESET_DRAWS, 0.0, 1.0))

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        reward, terms = self.spec.reward(self._qpos[:, 0], torch.cos(self._qpos[:, 1]), self._qvel[:, 1],
                                         self._ctrl[:, 0])
        return reward, self.spec.terminate(self._qpos, self._qvel), terms
