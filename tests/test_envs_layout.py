"""The layout of ``envs/`` (installed as ``ezm_gpu.envs``): no import cycle between its modules, the
algorithm stays out, one task-id parser, and every registered task declares all its facts.

The import graph is read from the source with ``ast`` (nothing is imported), so a cycle hidden in a
function-level import counts as much as a module-level one.
"""
import ast
import dataclasses
import math
import pathlib

import pytest

ENVS = pathlib.Path(__file__).resolve().parents[1] / "envs"
PACKAGE = "ezm_gpu.envs"


def _module_names() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` is the package itself)."""
    modules = {}
    for path in sorted(ENVS.rglob("*.py")):
        parts = list(path.relative_to(ENVS).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _imports(name: str, path: pathlib.Path, modules: dict) -> list[tuple[str, int]]:
    """Every module ``name`` imports (anywhere in the file, functions included), as (dotted name, line).

    ``from . import rewards`` is an import of the submodule ``rewards``; ``from . import make`` (a name,
    not a module) is an import of the package's ``__init__``.
    """
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule if submodule in modules else source, node.lineno))
    return found


def import_graph() -> tuple[dict[str, set], dict[str, list]]:
    """(graph: module -> the package's modules it imports, outside: module -> [(import, line)] of every
    import that leaves the package)."""
    modules = _module_names()
    graph, outside = {name: set() for name in modules}, {name: [] for name in modules}
    for name, path in modules.items():
        for target, line in _imports(name, path, modules):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in modules:  # ezm_gpu.envs.scene.parse_task_id -> ezm_gpu.envs.scene
                    target = target.rpartition(".")[0]
                if target != name:
                    graph[name].add(target)
            else:
                outside[name].append((target, line))
    return graph, outside


def find_cycle(graph: dict[str, set]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_envs_modules_import_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 5 and f"{PACKAGE}.rewards" in graph[PACKAGE]
    cycle = find_cycle(graph)
    assert not cycle, "import cycle in envs/: " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in cycle)


def test_envs_never_import_the_algorithm_or_torch_nn():
    _, outside = import_graph()
    bad = [(module, target, line) for module, imports in outside.items() for target, line in imports
           if target == "ezm_gpu" or target.startswith("ezm_gpu.") or target == "torch.nn"
           or target.startswith("torch.nn.")]
    assert bad == []


# --- the task registry -----------------------------------------------------------------------------------
def test_one_task_id_parser():
    """Task ids are split in one place: no other module of envs/ strips "-v0" or splits an id at "-"."""
    from ezm_gpu.envs import registry

    parser = ENVS / "registry.py"
    for path in sorted(ENVS.rglob("*.py")):
        if path == parser:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("-v0", "-"):
                raise AssertionError(f"{path.name}:{node.lineno} handles task ids itself; use registry.parse_task_id")
    assert hasattr(registry, "parse_task_id")


def test_registry_round_trips_every_task_id():
    from ezm_gpu import envs
    from ezm_gpu.envs import registry, rewards, scene
    from ezm_gpu.envs.env import make

    assert scene.parse_task_id is registry.parse_task_id and envs.parse_task_id is registry.parse_task_id
    assert scene.valid_task_ids is registry.valid_task_ids and make is envs.make
    ids = registry.valid_task_ids()
    assert ids == list(registry.TASKS) and len(ids) == len(set(ids)) == 30
    assert {task for tasks in registry.TASK_SETS.values() for task in tasks} <= set(ids)
    for task in [*ids, *(t for tasks in registry.TASK_SETS.values() for t in tasks)]:
        parsed = registry.parse_task_id(task)
        assert str(parsed) == task and registry.parse_task_id(f"{task}-v0") == parsed  # the recordings' names
        assert registry.task_spec(task) is registry.task_spec(f"{task}-v0") is registry.TASKS[task]
        assert registry.task_spec(task).task_id == parsed
    recordings = [f"{robot}-{task}-v0" for robot in registry.HUMANOIDBENCH_ROBOTS for task in registry.HARD_TASKS]
    assert "h1hand-reach-v0" in recordings
    for name in recordings:
        assert rewards.canonical_task_name(name) == name.removesuffix("-v0")
        assert envs.success_bar(name) == registry.task_spec(name).success_bar
    for bad in ("h1-fly", "walk", "h1-walk-v1", "cartpole", "g1-walk", "h1-walk-v0-v0", ""):
        with pytest.raises(ValueError, match="unknown task"):
            registry.parse_task_id(bad)
    with pytest.raises(TypeError):
        registry.parse_task_id(None)


def test_task_sets_are_declared_once():
    from ezm_gpu import envs
    from ezm_gpu.envs import multitask, registry, rewards, scene

    assert envs.TASK_SETS is multitask.TASK_SETS is registry.TASK_SETS
    assert registry.TASK_SETS["medium"] == tuple(f"h1-{t}" for t in registry.MEDIUM_TASKS)
    assert registry.TASK_SETS["hard"] == tuple(f"h1hand-{t}" for t in registry.HARD_TASKS)
    assert registry.TASK_SETS["cartpole"] == tuple(f"cartpole-{t}" for t in registry.CARTPOLE_TASKS)
    assert scene.HARD_TASKS is rewards.HARD_TASKS is envs.HARD_TASKS is registry.HARD_TASKS
    assert registry.MEDIUM_TASKS == registry.HARD_TASKS[:9]


def test_every_task_declares_all_its_facts():
    from ezm_gpu.envs import registry

    required = {"robot", "name", "family", "mjcf", "reward", "terminate", "reset", "observation", "capacity",
                "success_bar", "time_limit"}
    for task_id, spec in registry.TASKS.items():
        facts = {f.name for f in dataclasses.fields(spec)}
        assert required <= facts, (task_id, required - facts)
        assert f"{spec.robot}-{spec.name}" == task_id == str(spec.task_id)
        assert spec.family in registry.FAMILIES, task_id
        for hook in ("reward", "terminate", "reset", "observation"):
            assert callable(getattr(spec, hook)), (task_id, hook)
        # the model: HumanoidBench's scene file of (robot, name), or the task's own MJCF text
        assert (spec.mjcf is None) == (spec.family == registry.HUMANOIDBENCH), task_id
        assert spec.mjcf is None or spec.mjcf.lstrip().startswith("<mujoco"), task_id
        assert isinstance(spec.capacity, registry.Capacity) and spec.capacity.contacts >= 1 \
            and spec.capacity.constraints >= 1, task_id
        assert isinstance(spec.success_bar, float) and math.isfinite(spec.success_bar) and spec.success_bar > 0
        assert isinstance(spec.time_limit, int) and spec.time_limit >= 1, task_id
        for field in dataclasses.fields(spec):  # optional hooks are either absent or callable
            value = getattr(spec, field.name)
            if field.name not in required and value is not None and not isinstance(value, (bool, int)):
                assert callable(value), (task_id, field.name)
    hb = [spec for spec in registry.TASKS.values() if spec.family == registry.HUMANOIDBENCH]
    assert all(isinstance(spec, registry.HumanoidBenchSpec) for spec in hb) and len(hb) == 28
    assert {spec.name for spec in hb if spec.constants is not None} == {"hurdle", "pole", "maze", "balance_simple",
                                                                         "balance_hard"}
    assert {spec.name: spec.obs_extra_dim for spec in hb if spec.obs_extra_dim} == {"reach": 6}
    robots = {spec.robot for spec in registry.TASKS.values()}
    assert robots == {*registry.HUMANOIDBENCH_ROBOTS, "cartpole"}
    assert {spec.name for spec in registry.TASKS.values() if spec.robot == "cartpole"} == set(registry.CARTPOLE_TASKS)
