"""One rank of ``test_distributed_bench.py``: data-parallel learner updates per second (torchrun, gloo on the CPU).

``python -m torch.distributed.run --standalone --nproc_per_node=G distributed_updates.py OUT GLOBAL_BATCH``: every
rank fills its replay shard with random cartpole-sized transitions (2 tasks, obs 5, 1 action, 4 worlds), makes 2
untimed updates and then ``UPDATES`` timed ones from batches of GLOBAL_BATCH / G (the cpu preset, the small
search); rank 0 writes OUT (JSON: updates/s, world size, per-rank batch).
"""
import json
import pathlib
import sys
import time

import torch

from ezm_gpu.distributed import World, init_world
from ezm_gpu.learner import Learner, LearnerConfig
from ezm_gpu.model import EZMModel, ModelConfig
from ezm_gpu.planning import SearchSettings
from ezm_gpu.replay import ReplayBuffer, ReplayConfig

OBS, ACT, TASKS, WORLDS, UPDATES = 5, 1, 2, 4, 10


def main(out: pathlib.Path, global_batch: int) -> None:
    torch.set_num_threads(1)  # one core per rank: two ranks use the machine's two
    world = World.from_env()
    init_world(world, torch.device("cpu"))
    torch.manual_seed(0)
    model = EZMModel(ModelConfig.cpu(obs_dim=OBS, action_dim=ACT, num_tasks=TASKS))
    learner = Learner(model, LearnerConfig(), SearchSettings(num_simulations=8, num_root_actions=8, root_wide=6),
                      world)
    batch = global_batch // world.size
    replay = ReplayBuffer(ReplayConfig(num_tasks=TASKS, capacity=512, obs_dim=OBS, action_dim=ACT,
                                       num_worlds=WORLDS, batch_size=batch))
    g = torch.Generator().manual_seed(world.rank)
    for t in range(100):
        replay.add(torch.tensor([0, 0, 1, 1]), torch.randn(WORLDS, OBS, generator=g),
                   torch.rand(WORLDS, ACT, generator=g) * 2 - 1, torch.rand(WORLDS, generator=g),
                   torch.full((WORLDS,), t % 50 == 49), torch.randn(WORLDS, OBS, generator=g))
    generator = torch.Generator().manual_seed(world.rank)
    for _ in range(2):
        learner.update(replay, generator)
    start = time.perf_counter()
    for _ in range(UPDATES):
        learner.update(replay, generator)
    seconds = time.perf_counter() - start
    if world.main:
        out.write_text(json.dumps({"world_size": world.size, "batch_per_rank": batch,
                                   "updates_per_s": UPDATES / seconds}))
    if world.size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), int(sys.argv[2]))
