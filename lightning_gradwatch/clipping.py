"""Norm-based gradient clipping (the stable import path).

The policy (:class:`AdaptiveClipThreshold`, :func:`clip_coefficient`) is plain Python in
:mod:`lightning_gradwatch.judge.clipping`; scaling the gradients in place (:func:`scale_gradients_`) is the actor's,
in :mod:`lightning_gradwatch.act.scaling`.
"""

from __future__ import annotations

from lightning_gradwatch.act.scaling import scale_gradients_
from lightning_gradwatch.judge.clipping import AdaptiveClipThreshold, clip_coefficient, sgd_step_scale

__all__ = ["AdaptiveClipThreshold", "clip_coefficient", "scale_gradients_", "sgd_step_scale"]
