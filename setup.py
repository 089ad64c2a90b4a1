"""ezm-gpu: EfficientZero-Multitask for humanoid control, entirely on the accelerator.

One distribution, three import packages: the algorithm (`ezm_gpu`), the tree-search kernels
(`kernels/` installed as `ezm_gpu.kernels`) and the batched HumanoidBench tasks (`envs/` installed as
`ezm_gpu.envs`).
"""
from setuptools import setup

setup(
    name="ezm-gpu",
    version="0.1.0",
    description="EfficientZero-Multitask on the accelerator: Triton tree search, MuJoCo-Warp HumanoidBench",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["ezm_gpu", "ezm_gpu.kernels", "ezm_gpu.envs", "ezm_gpu.configs"],
    package_dir={
        "ezm_gpu": "ezm_gpu",
        "ezm_gpu.kernels": "kernels",
        "ezm_gpu.envs": "envs",
        "ezm_gpu.configs": "configs",
    },
    package_data={"ezm_gpu.configs": ["*.yaml", "*/*.yaml"], "ezm_gpu.envs": ["asset_manifest.sha256"]},
    include_package_data=True,
    entry_points={"console_scripts": ["ezm-gpu-selfcheck = ezm_gpu.selfcheck:main"]},
    install_requires=[
        # A range, never a pin: 2.13 (the CPU wheel CI installs first) satisfies it, so pip keeps it.
        "torch>=2.4,<3",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy>=1.24",
        "warp-lang>=1.8",
        "mujoco>=3.3",
        "mujoco-warp>=3.3",
        "hydra-core>=1.3",
        "matplotlib>=3.7",  # learning-curve plots (python -m ezm_gpu.plot)
        "tensorboard>=2.14",  # run metrics
        "tqdm>=4.60",  # training progress bar
    ],
    extras_require={
        # setuptools and wheel: the packaging test builds a wheel offline (--no-build-isolation)
        # jax (its CPU build, PyPI's default) and mctx: the discrete policies are tested against mctx itself,
        # and its golden trees; mctx pinned because the tests check those files' content.
        "test": ["pytest>=8", "pytest-benchmark>=4", "setuptools>=64", "wheel", "jax>=0.4.30", "mctx==0.0.71"],
        "bench": ["pytest-benchmark>=4", "jax>=0.4.30", "mctx==0.0.71"],
    },
)
