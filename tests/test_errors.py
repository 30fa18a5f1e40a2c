"""Every exception class lights-out defines derives from `LightsOutError`, so one `except LightsOutError`
at the top prints the one sentence of any of them; a new class that forgets the base fails here."""
from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

from lights_out_dev.errors import LightsOutError

PACKAGE = Path(__file__).resolve().parents[1] / "lights_out_dev"
BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}


def modules() -> list[str]:
    return [".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))
            if p.name != "__init__.py"]


def classes_not_derived_by_source(module: str) -> list[str]:
    """For a module whose third-party imports are missing here: its classes that name a built-in exception
    as a base without LightsOutError beside it (a subclass of one of the package's own errors is checked
    where that one is defined)."""
    tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
            if bases & BUILTIN_EXCEPTIONS and "LightsOutError" not in bases:
                bad.append(f"{module}.{node.name}")
    return bad


def test_every_exception_class_of_the_package_derives_from_lights_out_error():
    seen, bad = [], []
    for module in modules():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # an optional extra (e.g. mcp) not installed: read the source instead
            assert e.name and not e.name.startswith("lights_out_dev"), e
            bad += classes_not_derived_by_source(module)
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == module:
                seen.append(obj.__name__)
                if not issubclass(obj, LightsOutError):
                    bad.append(f"{module}.{obj.__name__}")
    assert bad == []
    # the walk found the package's errors at all (a broken walk would pass vacuously)
    assert {"ConfigError", "PlanError", "LaunchError", "GpuLockError", "DamagedState", "SlurmRejected"} <= set(seen)

