"""The package's layers, checked on its source: each layer imports only the layers below it (function-level
imports included), nothing imports a CLI module, no import cycle, and only executors/ asks which executor
it has. README "Architecture" describes the same order."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lights_out_dev"
# bottom to top; a module may import its own layer and the ones before it
LAYERS = ("errors", "core", "host", "executors", "run", "sweep", "views", "agent", "cli", "doit")
EXECUTOR_KINDS = {"local", "slurm"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"  # the package's own __init__ is empty, as low as errors


def package_imports(path: Path) -> set[str]:
    """Every lights_out_dev module that `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lights_out_dev"):
            for alias in node.names:  # `from lights_out_dev.core import state` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lights_out_dev")}
    return found


GRAPH = {module_name(p): package_imports(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_known_layer():
    assert {layer(m) for m in GRAPH} <= set(LAYERS)


def test_each_layer_imports_only_the_layers_below_it():
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in GRAPH.items() for d in sorted(deps)
              if LAYERS.index(layer(d)) > LAYERS.index(layer(m))]
    assert upward == []


def test_no_module_imports_a_cli_module():
    assert [(m, d) for m, deps in GRAPH.items() for d in deps if layer(d) == "cli" and layer(m) != "cli"] == []


def test_no_import_cycle():
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for dep in GRAPH.get(node, ()):
                if dep == start:
                    return path + [dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    cycles = [c for c in map(cycle_from, GRAPH) if c]
    assert cycles == []


def test_only_executors_compare_against_an_executor_kind():
    """`x.kind == "slurm"` outside executors/ is a seam that leaks: ask the executor instead."""
    leaks = []
    for path in PACKAGE.rglob("*.py"):
        if layer(module_name(path)) == "executors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = {c.value for c in operands if isinstance(c, ast.Constant)}
                names |= {e.value for c in operands if isinstance(c, (ast.Tuple, ast.Set, ast.List))
                          for e in c.elts if isinstance(e, ast.Constant)}
                if names & EXECUTOR_KINDS:
                    leaks.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert leaks == []
