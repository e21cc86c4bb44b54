"""The package's structure: no import cycles, the model knows nothing of configs or the engine,
and inference does not import training."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gfldet"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module: gfldet modules it imports} (module level and inside functions alike)."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
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
                    found |= {
                        s for s in subs if (PKG.parent / (s.replace(".", "/") + ".py")).exists()
                    }
                    found.add(mod)
        graph[name] = {m for m in found if m != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_no_import_cycles():
    graph = imports()
    cycles = [m for m in graph if m in reachable(graph, m) and m != "gfldet"]
    # The package itself only re-exports lazily (gfldet/__init__.py imports on first use).
    assert not cycles, f"modules importing themselves through others: {sorted(cycles)}"


def test_the_model_knows_nothing_of_configs_or_the_engine():
    graph = imports()
    assert {"gfldet.model.detector", "gfldet.model.build", "gfldet.training.trainer"} <= set(graph)
    for m in graph:
        if m.startswith("gfldet.model"):
            bad = {d for d in reachable(graph, m)
                   if d.startswith(("gfldet.config", "gfldet.data"))}  # fmt: skip
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
