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


def test_new_transitions_get_the_maximum_priority_over_every_shard(two_ranks):
    a, b = two_ranks
    assert not torch.equal(a["local_max"], b["local_max"])  # the shards' own maxima differ...
    union = torch.maximum(a["local_max"], b["local_max"])
    assert torch.equal(a["new_priorities"], union) and torch.equal(b["new_priorities"], union)  # ...new rows get both's


def test_world_from_torchrun_environment():
    assert World.from_env({}) == World()
    assert World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    assert World(1, 2, 1).main is False and World().main
    with pytest.raises(ValueError, match="incomplete or not integers"):
        World.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="invalid world: rank 2 of 2"):
        World(2, 2, 0)


# --- the training application under torchrun ------------------------------------------------------------------
# test_train's SMALL run (cartpole, 4 worlds, 60 env steps per task, 55 + 11 updates) on 2 ranks: 2 worlds and a
# batch of 8 per rank.
SMALL = ["tasks=cartpole", "envs=4", "steps=60", "preset=cpu", "device=cpu", "start_transitions=20", "batch_size=16",
         "replay_capacity=1000", "log_interval=2", "eval_interval=10000", "checkpoint_interval=5", "eval_steps=20",
         "updates_per_step=0.92", "final_updates=0.2", "search=small", "search.num_simulations=4",
         "search.num_root_actions=4", "search.root_wide=2"]


def _torchrun(*args, ranks=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            "-m", "ezm_gpu.train", *args]


def _env():
    import os

    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "whole"
    result = subprocess.run(_torchrun(*SMALL, f"out={out}"), capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def test_a_two_rank_run_writes_one_run_directory(whole_run):
    from ezm_gpu.checkpoint import latest_checkpoint, load_checkpoint, shard_path
    from ezm_gpu.config import load_run_config
    from test_train import _train_rows

    out, result = whole_run
    assert "data-parallel, world_size 2 (gloo): 2 worlds and batch 8 per rank, 4 and 16 in all" in result.stderr
    assert result.stdout.count("run directory:") == 1 and result.stdout.count("cartpole-balance") == 1  # rank 0
    assert load_run_config(out).world_size == 2
    rows = _train_rows(out)
    assert [row["step"] for row in rows] == list(range(2, 67, 2))  # one row per log interval: rank 0's only
    last = latest_checkpoint(out / "checkpoints")
    state, shard = load_checkpoint(last), load_checkpoint(shard_path(last, 1))
    assert state["counters"] == shard["counters"] == {"iteration": 30, "updates": 66}  # the run's plan, as 1 rank
    assert state["world_size"] == 2 and "learner" in state and "learner" not in shard
    ours, theirs = state["envs"]["envs"][0], shard["envs"]["envs"][0]  # cartpole-balance on each rank
    assert ours["num_envs"] == theirs["num_envs"] == 1  # each rank's own world of each task
    assert not torch.equal(ours["qpos"], theirs["qpos"])  # distinct streams
    assert len(list((out / "checkpoints").glob("*.pt"))) == 2 * 3  # the 3 newest, each with its shard


def test_a_two_rank_run_resumes_exactly_after_sigterm_and_refuses_another_world_size(whole_run, tmp_path):
    """SIGTERM to the launcher: torchrun passes it to both ranks, which agree to stop at the same update, checkpoint
    and exit; resumed with torchrun the run ends as the uninterrupted one did, update by update. A resume with
    one process is refused, naming the world size to use."""
    import signal
    import time

    from test_train import _train_rows

    out = tmp_path / "parted"
    launcher = subprocess.Popen(_torchrun(*SMALL, f"out={out}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env())
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint_000000000010.pt").exists():
        assert launcher.poll() is None and time.time() < deadline, "the run ended before its checkpoint at 10"
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "interrupted (SIGTERM)" in stderr and f"resume with: python -m ezm_gpu.train resume={out}" in stderr
    refused = subprocess.run([sys.executable, "-m", "ezm_gpu.train", f"resume={out}"], capture_output=True, text=True,
                             timeout=300, env=_env())
    assert refused.returncode != 0
    assert "was trained with world_size=2; this launch has 1 rank(s): resume it with torchrun --nproc_per_node=2" \
        in refused.stderr
    resumed = subprocess.run(_torchrun(f"resume={out}"), capture_output=True, text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _train_rows(out) == _train_rows(whole_run[0])


def test_a_killed_rank_ends_the_job_with_an_error_in_bounded_time(tmp_path):
    """Rank 1 killed (SIGKILL) mid-run: torchrun stops rank 0 and exits with an error, well inside a minute."""
    import os
    import signal
    import time

    out = tmp_path / "killed"
    launcher = subprocess.Popen(_torchrun(*SMALL, "steps=2000", f"out={out}"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint_000000000005.pt").exists():
        assert launcher.poll() is None and time.time() < deadline
        time.sleep(0.05)
    rank1 = [pid for pid in _descendants(launcher.pid) if _environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    start = time.time()
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and time.time() - start < 60
    assert "ChildFailedError" in stderr or "failed" in stderr.lower()


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children + [d for child in children for d in _descendants(child)]


def _environ(pid: int) -> dict:
    try:
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.parametrize("fault", ["nan", "raise"])
def test_a_fault_on_one_rank_stops_every_rank(tmp_path, fault):
    """Rank 1's loss turns NaN at update 7 (rank 0's stays finite): both ranks stop as diverged at the next log
    point and the last good checkpoint (update 5) is intact; or rank 1 raises: the job ends with an error."""
    import time

    from ezm_gpu.checkpoint import latest_checkpoint, load_checkpoint

    out = tmp_path / fault
    env = dict(_env(), EZM_TEST_FAULT=fault, EZM_TEST_FAULT_AT="7")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "faulty_train.py"), *SMALL, f"out={out}"]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and time.time() - start < 120
    if fault == "raise":
        assert "injected fault on rank 1" in result.stderr
        return
    assert "ezm_gpu.train: the loss of another rank became non-finite at update 7" in result.stderr  # rank 0
    assert "ezm_gpu.train: loss became nan at update 7" in result.stderr  # rank 1
    last = latest_checkpoint(out / "checkpoints")
    assert last.name == "checkpoint_000000000005.pt" and load_checkpoint(last)["counters"]["updates"] == 5
