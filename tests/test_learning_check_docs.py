"""The README's CPU learning-check command is the configuration of the committed results
(benchmarks/results/cartpole_seed0 and _seed1, which differ only in the seed), so the documented
command reproduces what was measured."""
import dataclasses
import pathlib
import re
import shlex

import pytest

from ezm_gpu.config import validate
from ezm_gpu.train import compose_config, load_run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_command() -> list:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"python -m ezm_gpu\.train (task_set=cartpole[^`]*?)\n```", text, re.S)
    assert match, "README lacks the cartpole learning-check command"
    return [a for a in shlex.split(match.group(1).replace("\\\n", " ")) if not a.startswith("out=")]


@pytest.mark.parametrize("seed", [0, 1])
def test_readme_command_matches_the_committed_results(seed):
    documented = compose_config(_readme_command() + [f"seed={seed}"])
    measured = load_run_config(ROOT / "benchmarks" / "results" / f"cartpole_seed{seed}")
    # (the task set is named in configs/task_set, listed in the runs' config.yaml: compared as task lists)
    assert (dataclasses.replace(measured, out=None, resume=None, tasks=validate(measured))
            == dataclasses.replace(documented, out=None, tasks=validate(documented)))
