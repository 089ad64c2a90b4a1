"""Batched HumanoidBench tasks on MuJoCo-Warp (`ezm_gpu.envs`).

The tasks themselves arrive with the medium-set issue; this package exists so the distribution's
layout (``envs/`` installed as ``ezm_gpu.envs``) is fixed from the start. It never imports
``ezm_gpu``'s algorithm modules.
"""

__all__: list[str] = []
