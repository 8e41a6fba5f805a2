"""Judging a step: pure Python over floats, no torch.

``detector.py`` composes the detection rules (``nonfinite.py``, ``exploding.py``, ``vanishing.py``, each rule a
small class of ``rule.py`` over the shared histories of ``context.py``); ``config.py`` holds their thresholds and
``state.py`` how their state is checkpointed.
"""

__all__: list[str] = []
