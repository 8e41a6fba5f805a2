"""The public API is what ``lightning_gradwatch`` exports; every other module declares what it offers in ``__all__``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import lightning_gradwatch

PACKAGE = Path(lightning_gradwatch.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))


def test_top_level_exports():
    assert set(lightning_gradwatch.__all__) == {
        "GradWatch",
        "GradientAlert",
        "GradientAlertError",
        "GradientWarning",
        "__version__",
    }
    for name in lightning_gradwatch.__all__:
        assert getattr(lightning_gradwatch, name) is not None


def test_every_module_declares_all_and_its_names_exist():
    for stem in MODULES:
        module = importlib.import_module(f"lightning_gradwatch.{stem}")
        assert hasattr(module, "__all__"), f"{stem}.py has no __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{stem}.__all__ names what it does not define: {missing}"


def test_modules_use_public_modules_only_through_all():
    # modules whose names start with "_" are internal whole; the others say in __all__ what the package may use
    declared = {stem: set(importlib.import_module(f"lightning_gradwatch.{stem}").__all__) for stem in MODULES}
    undeclared = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_gradwatch."):
                stem = node.module.split(".")[1]
                if stem.startswith("_"):
                    continue
                undeclared += [f"{path.stem} uses {stem}.{a.name}" for a in node.names if a.name not in declared[stem]]
    assert not undeclared, undeclared


def test_pure_modules_load_without_torch():
    # detection and the run files are plain Python: the `gradwatch` command and a detector need no torch
    code = (
        "import sys\n"
        "import lightning_gradwatch.detectors, lightning_gradwatch.alerts, lightning_gradwatch.report\n"
        "import lightning_gradwatch._validation\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
