"""Training one cell of ``clipping_families`` with one clipping rule: the plain loop, and the same through a Trainer.

The plain loop runs the package's per-step path (``clipping_adapter.Measure``: one fused measurement, one host
transfer, ``clip_coefficient`` and ``GradientStats.scale_``). A threshold rule sees what the callback would give it:
the step's total norm and per-layer norms, and the training loss GradWatch's judge is given
(``clipping_adapter.LOSS_OF_THIS_STEP``: this step's, or the previous step's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from clipping_adapter import LOSS_OF_THIS_STEP, Measure, gradwatch
from clipping_families import Setup
from clipping_grid import fit_one_epoch
from clipping_rules import ActingRule, Rule
from torch import Tensor


@dataclass
class Result:
    """One run: the clean validation metric (``nan``: lost), and what happened on the way."""

    metric: float
    steps: int
    clipped: int = 0
    outlier_steps: int = 0
    clipped_outlier: int = 0
    trace: dict[str, list[float]] = field(default_factory=dict)  # per step: norm, threshold, loss (on request)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric if self.finite else None,
            "steps": self.steps,
            "clipped": self.clipped,
            "outlier_steps": self.outlier_steps,
            "clipped_outlier": self.clipped_outlier,
            "trace": self.trace,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        metric = data["metric"]
        return cls(
            math.nan if metric is None else float(metric),
            int(data["steps"]),
            int(data["clipped"]),
            int(data["outlier_steps"]),
            int(data["clipped_outlier"]),
            data.get("trace", {}),
        )


def train(setup: Setup, rule: Rule, trace: bool = False) -> Result:
    model = setup.model()
    optimizer = setup.optimizer(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, setup.schedule) if setup.schedule else None
    measure = Measure(model)
    if hasattr(rule, "attach"):  # a rule that reads the optimizer's learning rate and the weights
        rule.attach(model, optimizer)
    result = Result(math.nan, 0)
    norms: list[float] = []
    thresholds: list[float] = []
    losses: list[float] = []
    ceilings: list[float] = []  # the loss-driven ceiling of a rule that has one (inf: not in force)
    previous_loss: float | None = None
    lost = False
    for (x, y), has_outlier in zip(setup.batches, setup.outlier):
        loss = setup.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if isinstance(rule, ActingRule):
            norm, threshold, clipped = rule.apply_(model), math.inf, False
        else:
            stats = measure.collect()
            norm = stats.total_norm
            given = float(loss.detach()) if LOSS_OF_THIS_STEP else previous_loss
            threshold = rule.update(norm, loss=given, layer_norms=stats.grad_norm, stats=stats)
            clipped = math.isfinite(norm) and measure.clip_(norm, threshold)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        previous_loss = float(loss.detach())
        result.steps += 1
        result.clipped += clipped
        result.outlier_steps += has_outlier
        result.clipped_outlier += clipped and has_outlier
        if trace:
            norms.append(norm)
            thresholds.append(threshold)
            losses.append(previous_loss)
            ceiling = getattr(rule, "ceiling", math.inf)
            ceilings.append(10**ceiling if ceiling < 300 else math.inf)
        if not (math.isfinite(previous_loss) and math.isfinite(norm)):
            lost = True
            break
    if not lost:
        result.metric = setup.evaluate(model)
    if trace:
        result.trace = {"norm": norms, "threshold": thresholds, "loss": losses}
        if any(math.isfinite(c) for c in ceilings):
            result.trace["ceiling"] = ceilings
        notice = getattr(rule, "notice_step", None)
        if notice is not None:
            result.trace["notice"] = [notice]
    return result


def train_with_trainer(setup: Setup, watch_kwargs: dict[str, Any]) -> Result:
    """The same run through a real Trainer with ``GradWatch(**watch_kwargs)``: same weights, batches, optimizer."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = setup.model()

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            return setup.loss(self.net, *batch)

        def configure_optimizers(self) -> Any:
            optimizer = setup.optimizer(self.net)
            if setup.schedule is None:
                return optimizer
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, setup.schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(setup.batches, batch_size=None, shuffle=False)

    module = Module()
    watch = gradwatch(**watch_kwargs)
    steps = fit_one_epoch(module, watch, "gradwatch-families-")
    clipped = int(watch.state_dict()["summary"]["events"].get("clipped_steps", 0))
    return Result(setup.evaluate(module.net), steps, clipped)
