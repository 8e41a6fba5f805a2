"""A bank run through a real ``lightning.pytorch.Trainer`` with ``GradWatch(on_*="warn")``.

The LightningModule holds the very modules the plain loop trains (same names, same seeds, same data order, same
noise stream), so the two traces agree step for step; ``python benchmarks/bank.py --lightning`` shows that the
plain loop's trace, replayed, gives the callback's alerts. Events go through Lightning's own mechanisms:
``accumulate_grad_batches``, the ``MixedPrecision`` plugin with a ``GradScaler``, manual optimization,
``BackboneFinetuning`` (for ``unfreeze``), ``add_param_group`` from a hook (``adapter``).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from bank_runs import (
    NONFINITE_TAIL,
    BankNet,
    RunSpec,
    Schedule,
    Trace,
    _gen,
    accumulation,
    batch_transform,
    build,
    corrupt_now,
    initial_params,
    loader,
    lr_factor,
    make_optimizer,
    nan_loss_now,
    step_event,
)
from gradwatch_adapter import recording_detector, warn_only_gradwatch
from lightning.pytorch.callbacks import BackboneFinetuning


class BankModule(pl.LightningModule):
    """The run's :class:`BankNet` parts, trained by Lightning."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        net = build(spec)
        self.spec = spec
        self.backbone, self.adapter, self.head, self.branch, self.aux = (
            net.backbone, net.adapter, net.head, net.branch, net.aux
        )  # fmt: skip
        self.adapter_on, self.corrupt_scale = False, 1.0
        self.noise = _gen(spec.seed + 7)
        self.losses: dict[int, float] = {}
        self.stepped = 0
        self.bad_after: int | None = None
        self.automatic_optimization = spec.event != "manual"

    features = BankNet.features
    loss = BankNet.loss

    def _batch_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        step = self.global_step
        x, y = batch_transform(self.spec, x, y, step, self.noise)
        self.corrupt_scale = self.spec.event_scale if corrupt_now(self.spec, step) else 1.0
        loss = self.loss(x, y, step)
        if nan_loss_now(self.spec, step):
            loss = loss * math.nan
        self.losses[step] = float(loss.detach())
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            return self._batch_loss(batch)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad()
        loss = self._batch_loss(batch)
        self.manual_backward(loss)
        optimizer.step()
        scheduler.step()
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx % accumulation(self.spec) == 0:
            step_event(self, self.trainer.optimizers[0], self.global_step, self.spec)  # type: ignore[arg-type]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step == self.stepped:
            return
        self.stepped = self.global_step
        step = self.global_step - 1
        if self.bad_after is None and not math.isfinite(self.losses.get(step, 0.0)):
            self.bad_after = step
        if self.bad_after is not None and self.global_step > self.bad_after + NONFINITE_TAIL:
            self.trainer.should_stop = True

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.spec, initial_params(self))  # type: ignore[arg-type]
        scheduler = Schedule(optimizer, lr_factor(self.spec))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> Any:
        return loader(self.spec)


def train_lightning(spec: RunSpec) -> Trace:
    """Train ``spec`` with a real Trainer and GradWatch (every response ``"warn"``): the callback's alerts and
    what its detector saw."""
    torch.set_num_threads(1)
    module = BankModule(spec)
    watch = warn_only_gradwatch()
    callbacks: list[Any] = [watch]
    if spec.event == "unfreeze":
        callbacks.insert(0, BackboneFinetuning(unfreeze_backbone_at_epoch=spec.event_step))
    kwargs: dict[str, Any] = {"accumulate_grad_batches": accumulation(spec)}
    if spec.event == "fp16":
        from lightning.pytorch.plugins import MixedPrecision

        kwargs["plugins"] = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**16))]
    trace = Trace(spec)
    with tempfile.TemporaryDirectory(prefix="gradwatch-bank-") as root, recording_detector() as recorder:
        trainer = pl.Trainer(max_steps=spec.steps, max_epochs=-1, logger=False, default_root_dir=root,
                             accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=callbacks, **kwargs)  # fmt: skip
        started = time.perf_counter()
        logger = logging.getLogger("lightning.pytorch")
        level = logger.level
        logger.setLevel(logging.ERROR)  # Lightning's banners, for this fit only
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(module)
        finally:
            logger.setLevel(level)
        trace.seconds = time.perf_counter() - started
    trace.records = recorder.records
    trace.exempt = recorder.exempt
    trace.losses = [module.losses[s] for s in sorted(module.losses)]
    trace.alerts = [(a.kind, a.step, tuple(a.layers)) for a in watch.alerts]
    return trace
