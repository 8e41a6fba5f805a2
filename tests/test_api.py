"""The public API is what ``lightning_gradwatch`` exports; every other module declares what it offers in ``__all__``."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import lightning_gradwatch

PACKAGE = Path(lightning_gradwatch.__file__).parent
#: every module below the package, dotted from it ("stats", "judge.detector"); subpackages' __init__ as "judge"
MODULES = sorted(
    m.name.removeprefix("lightning_gradwatch.")
    for m in pkgutil.walk_packages([str(PACKAGE)], prefix="lightning_gradwatch.")
    if not m.name.endswith("__main__")
)


def _internal(module: str) -> bool:
    """Modules (or packages) whose name starts with "_" are internal whole."""
    return any(part.startswith("_") for part in module.split("."))


def test_top_level_exports():
    assert set(lightning_gradwatch.__all__) == {
        "GradWatch",
        "GradientAlert",
        "GradientAlertError",
        "GradientWarning",
        "WatchedLoop",
        "__version__",
    }
    for name in lightning_gradwatch.__all__:
        assert getattr(lightning_gradwatch, name) is not None


def test_every_module_declares_all_and_its_names_exist():
    for name in MODULES:
        module = importlib.import_module(f"lightning_gradwatch.{name}")
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_modules_use_public_modules_only_through_all():
    # modules whose names start with "_" are internal whole; the others say in __all__ what the package may use
    declared = {name: set(importlib.import_module(f"lightning_gradwatch.{name}").__all__) for name in MODULES}
    undeclared = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_gradwatch."):
                used = node.module.removeprefix("lightning_gradwatch.")
                if _internal(used):
                    continue
                where = path.relative_to(PACKAGE)
                undeclared += [f"{where} uses {used}.{a.name}" for a in node.names if a.name not in declared[used]]
    assert not undeclared, undeclared


def test_pure_modules_load_without_torch():
    # detection and the run files are plain Python: the `gradwatch` command and a detector need no torch
    code = (
        "import sys\n"
        "import lightning_gradwatch.detectors, lightning_gradwatch.alerts, lightning_gradwatch.report\n"
        "import lightning_gradwatch._validation, lightning_gradwatch.config, lightning_gradwatch.history\n"
        "import lightning_gradwatch.kinds, lightning_gradwatch.judge.detector\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
