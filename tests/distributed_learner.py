"""One data-parallel rank of ``tests/test_distributed.py`` (started by torchrun, gloo): writes what the test compares.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_learner.py OUT_DIR``:
each rank writes OUT_DIR/rank<r>.pt with
- "grads": the averaged gradients of a loss through the model's heads (BatchNorm in training mode) on this rank's
  half of a fixed union batch, and "union": the union batch (the test computes its gradient in one process);
- "model", "ema", "moments", "losses": the learner's state after three updates from the rank's own replay shard;
- "local_max", "new_priorities": the shard's per-task maximum priority after them, and the priority a transition
  added next gets (the maximum over both shards).
"""
import pathlib
import sys

import torch

from ezm_gpu.distributed import World, average_gradients, init_world, reduce_
from ezm_gpu.learner import Learner, LearnerConfig
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings
from ezm_gpu.replay import ReplayBuffer, ReplayConfig

OBS, ACT, TASKS, WORLDS, UNION = 6, 3, 2, 4, 16


def head_loss(model, obs, tasks):
    """A loss through the representation and every head MLP (their BatchNorms in training mode)."""
    model.train()
    latent, prediction = model.initial_training(obs, tasks)
    return (prediction.value_logits.float().square().mean() + prediction.policy_mean.square().mean()
            + model.project(latent, with_prediction_head=True).square().mean())


def union_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(UNION, OBS, generator=g) * 2 + 1, torch.arange(UNION) % TASKS


def model():
    torch.manual_seed(0)  # every rank starts from the same weights
    return EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))


def shard_replay(world):
    replay = ReplayBuffer(ReplayConfig(num_tasks=TASKS, capacity=256, obs_dim=OBS, action_dim=ACT, num_worlds=WORLDS,
                                       batch_size=8), shared_max=lambda p: reduce_(p, world, "max"))
    rank = world.rank
    g = torch.Generator().manual_seed(100 + rank)  # each rank's own transitions
    tasks = torch.tensor([0, 0, 1, 1])
    for t in range(40):
        done = torch.tensor([t % 15 == 14, False, t % 20 == 19, False])
        replay.add(tasks, torch.randn(WORLDS, OBS, generator=g), torch.rand(WORLDS, ACT, generator=g) * 2 - 1,
                   torch.rand(WORLDS, generator=g), done, torch.randn(WORLDS, OBS, generator=g))
    return replay


def main(out: pathlib.Path) -> None:
    world = World.from_env()
    init_world(world, torch.device("cpu"))
    obs, tasks = union_batch()
    half = UNION // world.size
    mine = slice(world.rank * half, (world.rank + 1) * half)
    learner = Learner(model(), LearnerConfig(total_updates=10, lr_decay_at=0.3, ema_interval=2),
                      SearchSettings(num_simulations=4, num_top_actions=4), world)
    head_loss(learner.model, obs[mine], tasks[mine]).backward()
    average_gradients(learner.model.parameters(), world)
    grads = {name: p.grad.clone() for name, p in learner.model.named_parameters() if p.grad is not None}
    bn_stats = {name: b.clone() for name, b in learner.model.named_buffers() if "running" in name}
    learner.model.load_state_dict(model().state_dict())  # back to the start (BatchNorm statistics too)
    replay, generator = shard_replay(world), torch.Generator().manual_seed(world.rank)
    losses = [float(learner.update(replay, generator)["loss"]) for _ in range(3)]
    # One more step: its transitions get their task's maximum priority over both shards.
    local_max, slots = replay.priorities().amax(1), replay.num_added() % 256
    replay.add(torch.tensor([0, 0, 1, 1]), torch.zeros(WORLDS, OBS), torch.zeros(WORLDS, ACT), torch.zeros(WORLDS),
               torch.zeros(WORLDS, dtype=torch.bool), torch.zeros(WORLDS, OBS))
    new_priorities = replay.priorities().gather(1, slots[:, None])[:, 0]  # [T]: the first new row of each task
    moments = [t for state in learner.optimizer.state.values() for t in state.values()]
    torch.save({"grads": grads, "bn_stats": bn_stats, "model": learner.model.state_dict(),
                "ema": learner.ema.copy.state_dict(), "moments": moments, "losses": losses,
                "local_max": local_max, "new_priorities": new_priorities,
                "world": (world.rank, world.size)}, out / f"rank{world.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
