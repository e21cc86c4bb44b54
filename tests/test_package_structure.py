"""The package's structure: one folder per job, no import cycles between files or between
packages, the config layer above the jobs, the model and the shared core below them, and
inference that does not import training.

Imports are read from the source (module level and inside functions alike); those under
`if TYPE_CHECKING:` are for type checkers only and are left out.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.helpers import REPO

PKG = REPO / "gfldet"

# The packages of the jobs, the shared layer below them, and the modules above them.
JOBS = ("data", "model", "training", "evaluation", "inference", "deploy", "interop")
CORE = "gfldet.core"
ABOVE = ("gfldet.config", "gfldet.cli")

# Each job folder and the commands whose library function it holds (the `_cmd_*` functions of
# gfldet/cli.py). A new folder of gfldet/ says here which job it does; a command calls into the
# folder of its job only. The model (built by the jobs) and deploy (the runtimes and
# quantisation that inference's export and benchmark use) have no command of their own.
JOB_COMMANDS = {
    "data": {"synth", "convert", "check", "stats", "show"},
    "model": set(),
    "training": {"train", "curves"},
    "evaluation": {"eval"},
    "inference": {"infer", "export", "benchmark"},
    "deploy": set(),
    "interop": {"convert_mmdet"},
}
# Commands of the config layer itself (gfldet.config, gfldet.config_schema): no job.
CONFIG_COMMANDS = {"config_schema", "config_list"}
# The modules at the top of the package: the layer above the jobs, and the entry points.
TOP_MODULES = {"__init__", "__main__", "cli", "config", "config_schema", "presets"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except those under `if TYPE_CHECKING:` (its else branch runs)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return out


@functools.cache
def imports() -> dict[str, set[str]]:
    """{module: gfldet modules it imports at run time}."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in run_time_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("gfldet")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("gfldet"):
                    # `from . import dist` names a module; `from .x import f` a member of x.
                    subs = [f"{mod}.{a.name}" for a in node.names]
                    found |= {s for s in subs if _is_module(s)}
                    found.add(mod)
        graph[name] = {m for m in found if m != name}
    return graph


def _is_module(dotted: str) -> bool:
    path = PKG.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def unit(module: str) -> str:
    """The package a module belongs to (gfldet.data.yolo -> gfldet.data); a top-level module
    (gfldet.config, gfldet.cli) is its own unit."""
    parts = module.split(".")
    if len(parts) >= 2 and (PKG / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def package_graph() -> dict[str, set[str]]:
    """{package: the other packages (and top-level modules) its modules import at run time}.
    The package itself (gfldet/__init__.py) only re-exports lazily and is left out."""
    graph: dict[str, set[str]] = {}
    for m, deps in imports().items():
        if m == "gfldet":
            continue
        u = unit(m)
        graph.setdefault(u, set()).update(unit(d) for d in deps if unit(d) not in (u, "gfldet"))
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def importers(graph: dict[str, set[str]], target_prefixes: tuple[str, ...], where: str) -> dict:
    """{module under `where`: the modules of `target_prefixes` it imports directly}."""
    out = {}
    for m, deps in graph.items():
        if m == where or m.startswith(where + "."):
            bad = {d for d in deps if d in target_prefixes or d.startswith(target_prefixes)}
            if bad:
                out[m] = sorted(bad)
    return out


def test_no_import_cycles():
    graph = imports()
    cycles = [m for m in graph if m in reachable(graph, m) and m != "gfldet"]
    # The package itself only re-exports lazily (gfldet/__init__.py imports on first use).
    assert not cycles, f"modules importing themselves through others: {sorted(cycles)}"


def test_type_checking_imports_are_left_out():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nimport typing\n"
        "if TYPE_CHECKING:\n    import gfldet.config\n"
        "if typing.TYPE_CHECKING:\n    import gfldet.cli\nelse:\n    import gfldet.core\n"
        "def f():\n    import gfldet.data\n"
    )
    names = {a.name for n in run_time_nodes(tree) if isinstance(n, ast.Import) for a in n.names}
    assert names == {"typing", "gfldet.core", "gfldet.data"}


def test_the_packages_and_modules_of_the_test_exist():
    graph = package_graph()
    expected = {f"gfldet.{j}" for j in JOBS} | {CORE, *ABOVE}
    assert expected <= set(graph), f"gone: {sorted(expected - set(graph))}"


def test_no_import_cycle_between_packages():
    graph = package_graph()
    cycles = {}
    for u in graph:
        if u in reachable(graph, u):
            cycles[u] = sorted(v for v in reachable(graph, u) if u in reachable(graph, v))
    assert not cycles, f"packages importing themselves through others: {cycles}"


def test_no_job_imports_the_config_layer_or_the_cli():
    """The typed options travel down as arguments: a job never reads gfldet.config."""
    graph = imports()
    bad = {}
    for where in (*(f"gfldet.{j}" for j in JOBS), CORE):
        bad.update(importers(graph, ABOVE, where))
    assert not bad, f"imports of {ABOVE} below the config layer: {bad}"


def test_the_model_imports_no_other_job():
    graph = imports()
    others = tuple(f"gfldet.{j}" for j in JOBS if j != "model")
    bad = importers(graph, others, "gfldet.model")
    assert not bad, f"gfldet.model imports other jobs: {bad}"


def test_core_imports_no_job():
    graph = imports()
    bad = importers(graph, tuple(f"gfldet.{j}" for j in JOBS), CORE)
    assert not bad, f"gfldet.core imports job packages: {bad}"


def test_the_model_knows_nothing_of_configs_or_the_engine():
    graph = imports()
    assert {"gfldet.model.detector", "gfldet.model.build", "gfldet.training.trainer"} <= set(graph)
    for m in graph:
        if m.startswith("gfldet.model"):
            bad = {d for d in reachable(graph, m) if d.startswith(("gfldet.config", "gfldet.data"))}
            assert not bad, f"{m} imports {sorted(bad)}"


def test_inference_and_evaluation_do_not_import_training():
    graph = imports()
    for m in (
        "gfldet.inference.predictor",
        "gfldet.inference.infer",
        "gfldet.inference.video",
        "gfldet.evaluation.evaluator",
        "gfldet.inference.export",
        "gfldet.core.plots",
    ):
        assert m in graph, f"{m} is gone: this test would check nothing for it"
        assert "gfldet.training.trainer" not in reachable(graph, m), m
    # Plotting does not reach into the evaluator.
    assert "gfldet.evaluation.evaluator" not in reachable(graph, "gfldet.core.plots")
    assert "gfldet.evaluation.evaluator" not in reachable(graph, "gfldet.core.draw")


def test_every_folder_of_the_package_is_one_job_or_the_shared_core():
    folders = {p.parent.name for p in PKG.glob("*/*.py")}
    assert folders == set(JOB_COMMANDS) | {"core"}, (
        "a folder of gfldet/ that is not in JOB_COMMANDS: say which job it does, or move its "
        f"modules into the folder of that job: {sorted(folders ^ (set(JOB_COMMANDS) | {'core'}))}"
    )
    top = {p.stem for p in PKG.glob("*.py")}
    assert top <= TOP_MODULES, f"job modules at the top of the package: {sorted(top - TOP_MODULES)}"


def command_packages() -> dict[str, set[str]]:
    """{command (the X of cli's _cmd_X): the folders of gfldet/ its function imports from}."""
    tree = ast.parse((PKG / "cli.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_cmd_"):
            found = set()
            for n in ast.walk(node):
                if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module:
                    first = n.module.split(".")[0]
                    if (PKG / first).is_dir():
                        found.add(first)
            out[node.name.removeprefix("_cmd_")] = found
    return out


def test_each_command_calls_into_the_folder_of_its_job_only():
    """No folder holds more than one job: the commands a folder serves are those of its job,
    and a command reaches no other job's folder (the config layer's own commands none)."""
    expected = {cmd: {job} for job, cmds in JOB_COMMANDS.items() for cmd in cmds}
    expected |= {cmd: set() for cmd in CONFIG_COMMANDS}
    assert command_packages() == expected
