"""The package's shape, held to its targets: no function above cyclomatic complexity 12, no module below a
maintainability index of 20 (radon's measures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from radon.complexity import cc_visit
from radon.metrics import mi_visit

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_gradwatch"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_COMPLEXITY = 12
MIN_MAINTAINABILITY = 20


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_too_complex(path):
    too_complex = [
        f"{block.name} ({block.complexity})"
        for block in cc_visit(path.read_text(encoding="utf-8"))
        if block.complexity > MAX_COMPLEXITY
    ]
    assert too_complex == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_maintainable(path):
    assert mi_visit(path.read_text(encoding="utf-8"), multi=True) >= MIN_MAINTAINABILITY
