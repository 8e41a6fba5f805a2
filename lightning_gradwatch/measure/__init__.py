"""Measuring: per-layer gradient statistics in one fused pass, with one device-to-host transfer per step.

Torch only: nothing here judges, writes or knows Lightning. ``stats.py`` holds ``GradientStats``.
"""

__all__: list[str] = []
