"""Data-parallel learning (``ezm_gpu.distributed``), two ranks on the CPU with gloo, launched by the real torchrun."""
import pathlib
import subprocess
import sys

import pytest
import torch

from ezm_gpu.distributed import World

HERE = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(HERE / "distributed_learner.py"), str(out)], capture_output=True, text=True,
                            timeout=600, cwd=HERE)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_gradients_are_those_of_one_process_on_the_union_batch(two_ranks):
    """Each rank backpropagates its half of a batch through the heads (BatchNorm in training mode); after the
    average, every rank holds the gradient one process computes on the whole batch, and BatchNorm's running
    statistics are the whole batch's. Tolerance: float32 (sums of 16 rows in another order; BatchNorm's variance
    from sums of squares rather than torch's two-pass kernel)."""
    sys.path.insert(0, str(HERE))
    from distributed_learner import head_loss, model, union_batch

    single = model()
    obs, tasks = union_batch()
    head_loss(single, obs, tasks).backward()
    for rank in two_ranks:
        assert rank["grads"].keys() == {name for name, p in single.named_parameters() if p.grad is not None}
        assert len(rank["grads"]) > 20  # the representation, the value, policy and projection heads
        for name, p in single.named_parameters():
            if p.grad is None:
                continue
            torch.testing.assert_close(rank["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        buffers = dict(single.named_buffers())
        for name, value in rank["bn_stats"].items():
            torch.testing.assert_close(value, buffers[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(torch.equal(two_ranks[0]["grads"][k], two_ranks[1]["grads"][k]) for k in two_ranks[0]["grads"])


def test_weights_adam_and_ema_stay_identical_across_ranks(two_ranks):
    """Three updates from different replay shards (different batches and losses): the same weights, BatchNorm
    buffers, Adam moments and EMA copy on both ranks, bit for bit (averaged gradients, union statistics)."""
    a, b = two_ranks
    assert a["world"] == (0, 2) and b["world"] == (1, 2)
    assert a["losses"] != b["losses"]  # the ranks did learn from different data
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["moments"], b["moments"]))


def test_world_from_torchrun_environment():
    assert World.from_env({}) == World()
    assert World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    assert World(1, 2, 1).main is False and World().main
    with pytest.raises(ValueError, match="incomplete or not integers"):
        World.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="invalid world: rank 2 of 2"):
        World(2, 2, 0)
