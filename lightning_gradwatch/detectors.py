"""Detection of vanishing, exploding and non-finite gradients (the stable import path).

The detector and its rules live in :mod:`lightning_gradwatch.judge` (``judge/detector.py`` describes them).
"""

from __future__ import annotations

from lightning_gradwatch.config import DetectionConfig
from lightning_gradwatch.judge.detector import GradientDetector, Verdict

__all__ = ["DetectionConfig", "GradientDetector", "Verdict"]
