"""Device memory of the training command's long-lived state: ``python benchmarks/memory.py [envs]``.

Sizes are measured from what the package allocates, on CPU (the same tensors and Warp arrays as on a GPU;
nothing here depends on the device): the replay's storage layout, MuJoCo-Warp's Model and Data of every
task (Warp arrays' byte capacity, per world measured at 1 and 2 worlds and scaled), the model with its
gradients, Adam's two moments and the EMA copy, and one acting search's trees. Transient activations (the
update's unrolled forward/backward, the search's recurrent inference) are not measured on CPU: the GPU
self-check reports the peak. Prints a markdown table for benchmarks/README.md.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

import torch

_SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "humanoidbench"
if not os.environ.get("EZM_HUMANOIDBENCH_ROOT") and _SHARED.is_dir():
    os.environ["EZM_HUMANOIDBENCH_ROOT"] = str(_SHARED)

GIB = 2**30


def _warp_bytes(obj) -> int:
    """Bytes of every Warp array held by a MuJoCo-Warp Model/Data (nested structs included)."""
    import warp as wp

    if isinstance(obj, wp.array):
        return obj.capacity
    if dataclasses.is_dataclass(obj):
        return sum(_warp_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def _physics_bytes(task: str, worlds: int) -> int:
    from ezm_gpu.envs import make
    from ezm_gpu.envs.scene import put_warp

    env = make(task, 1, device="cpu")  # the task's own contact/constraint capacity
    one = _warp_bytes(put_warp(env.mj_model, 1, env.capacity, device="cpu")[1])
    two = _warp_bytes(put_warp(env.mj_model, 2, env.capacity, device="cpu")[1])
    return _warp_bytes(env.model) + one + (two - one) * (worlds - 1)


def sizes(overrides: list) -> dict:
    """Bytes per component of ``python -m ezm_gpu.train <overrides>``'s long-lived device state."""
    from ezm_gpu import envs
    from ezm_gpu.config import validate
    from ezm_gpu.kernels import init_tree
    from ezm_gpu.replay import ReplayConfig, storage_bytes
    from ezm_gpu.train import build_model, compose_config

    cfg = compose_config(overrides)
    tasks = validate(cfg)
    probe = envs.make_set(tasks, len(tasks), device="cpu")  # one world per task: dims and models
    counts = [cfg.envs // len(tasks) + (i < cfg.envs % len(tasks)) for i in range(len(tasks))]
    replay = storage_bytes(ReplayConfig(num_tasks=len(tasks), capacity=cfg.replay_capacity, obs_dim=probe.obs_dim,
                                        action_dim=probe.action_dim, num_worlds=cfg.envs, td_steps=cfg.td_steps,
                                        batch_size=cfg.batch_size // len(tasks) * len(tasks)))
    physics = sum(_physics_bytes(task, count) for task, count in zip(tasks, counts))
    model = build_model(cfg, probe, torch.device("cpu"))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    learner = 5 * params + 2 * buffers  # weights, gradients, Adam's m and v, the EMA copy; buffers twice
    config = cfg.search.kernel_config
    B, K = cfg.envs, cfg.search.num_root_actions
    with torch.no_grad():
        latent = model.eval().initial_inference(probe.reset(), probe.task_ids).latent.shape[1:]
    tree = init_tree(torch.zeros(B), torch.zeros(B, K, probe.action_dim), torch.zeros(B, K), torch.zeros(B, K),
                     config)
    trees = sum(t.numel() * t.element_size() for t in vars(tree).values() if isinstance(t, torch.Tensor))
    trees += B * (config.num_simulations + 1) * int(torch.tensor(latent).prod()) * 4  # embeddings [B, N+1, D]
    return {"replay": replay, "physics": physics, "learner": learner, "search": trees}


def main(argv=None) -> None:
    envs_count = (argv or sys.argv[1:] or ["4096"])[0]
    print("| command | replay | MuJoCo-Warp Model+Data | model, grads, Adam, EMA | acting search trees | total |")
    print("|---|---|---|---|---|---|")
    for name, overrides in (("medium", [f"envs={envs_count}"]), ("hard", ["task_set=hard", "preset=hard",
                                                                           f"envs={envs_count}"])):
        parts = sizes(overrides)
        cells = " | ".join(f"{parts[k] / GIB:.2f} GiB" for k in ("replay", "physics", "learner", "search"))
        print(f"| `{' '.join(overrides)}` ({name}) | {cells} | {sum(parts.values()) / GIB:.2f} GiB |")


if __name__ == "__main__":
    main()
