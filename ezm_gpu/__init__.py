"""EfficientZero-Multitask on the accelerator.

Kept light on purpose: importing ``ezm_gpu`` loads nothing heavy. The tree search lives in
``ezm_gpu.kernels`` and the batched tasks in ``ezm_gpu.envs``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
