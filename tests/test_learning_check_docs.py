"""The README's CPU learning-check command is the configuration of the committed result
(benchmarks/results/cartpole/config.yaml), so the documented command reproduces what was measured."""
import dataclasses
import pathlib
import re
import shlex

from ezm_gpu.train import compose_config, load_run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_command() -> list:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"python -m ezm_gpu\.train (task_set=cartpole[^`]*?)\n```", text, re.S)
    assert match, "README lacks the cartpole learning-check command"
    return [a for a in shlex.split(match.group(1).replace("\\\n", " ")) if not a.startswith("out=")]


def test_readme_command_matches_the_committed_result():
    documented = compose_config(_readme_command())
    measured = load_run_config(ROOT / "benchmarks" / "results" / "cartpole")
    assert dataclasses.replace(measured, out=None, resume=None) == dataclasses.replace(documented, out=None)
