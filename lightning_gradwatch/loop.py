"""GradWatch in a training loop you write: plain PyTorch, or Lightning Fabric.

``watch.loop(model)`` opens a :class:`WatchedLoop`, the same engine the Trainer callback adapts
(``engine/session.py``): each :meth:`WatchedLoop.step`, called between ``backward`` and ``optimizer.step``, measures
the gradients, judges them, writes the charts and acts (skip, clip, stop, raise), with the same TensorBoard tags,
``gradwatch.json`` and ``gradwatch check`` verdict as a Trainer run. Under Lightning Fabric it writes through
Fabric's loggers, unscales fp16 gradients through its precision plugin, and takes every decision on all ranks
together (``_hosts.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gradwatch._environment import _scaler_enabled
from lightning_gradwatch._hosts import FabricHost, LoopHost, check_fabric, user_module
from lightning_gradwatch._validation import check_int
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.engine.environment import (
    LIGHTNING_LOG_EVERY,
    Environment,
    cadence_for_length,
    check_selection,
    histogram_interval,
    inner_optimizer,
)
from lightning_gradwatch.engine.session import Session, saved_alerts
from lightning_gradwatch.kinds import RunStatus
from lightning_gradwatch.remedies import ModelTraits

__all__ = ["TensorBoardDirectory", "WatchedLoop", "loop_environment"]

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
# beside the session's state in ``WatchedLoop.state_dict()``: the loop's step count
_STEP_KEY = "loop_step"


class WatchedLoop:
    r"""A training loop watched by a :class:`~lightning_gradwatch.GradWatch`; made by ``watch.loop(model, ...)``.

    Use it as a context manager around the loop, and call :meth:`step` after ``backward`` (or
    ``fabric.backward``), before ``optimizer.step()``::

        with watch.loop(model, log_dir="runs/x") as loop:
            for x, y in data:
                loss = loss_fn(model(x), y)
                loss.backward()
                if loop.step(optimizer, loss):  # False: GradWatch dropped this step's update
                    optimizer.step()
                optimizer.zero_grad()
                if loop.should_stop:
                    break

    Each step is measured, judged, written and acted on as the callback does it in ``on_before_optimizer_step``:
    per-layer charts (``grad_norm/<layer>``, ...) every ``log_every_n_steps`` steps (``None``: 50, Lightning's
    default, as a loop's length is not known), alerts, and the responses: ``"skip"`` and ``"stop"`` drop the step's
    gradients (:meth:`step` returns ``False``; optimizers leave parameters without a gradient untouched, state
    included), ``"clip"`` and ``clip=...`` scale them in place, ``"stop"`` sets :attr:`should_stop`, and
    ``"raise"`` raises :class:`~lightning_gradwatch.GradientAlertError` from :meth:`step`. The step count is the
    loop's own: the number of :meth:`step` calls so far (as ``Trainer.global_step``, it counts skipped steps).

    Where output goes:

    - ``log_dir``: TensorBoard event files and ``gradwatch.json`` in that directory (created when missing).
    - ``fabric``: through Fabric's loggers (a TensorBoard logger gets everything; any other logger the scalars
      through ``log_metrics``), and ``gradwatch.json`` in the TensorBoard logger's ``log_dir`` (else the first
      logger's); global rank 0 writes. With ``log_dir`` too, that directory gets its own event files and the report.
    - neither: no output; detection and responses still run, and :attr:`alerts` holds the alerts.

    fp16: with ``scaler`` (a plain loop's ``torch.amp.GradScaler``), or under Fabric with a loss scaler in its
    precision plugin (``precision="16-mixed"``), :meth:`step` unscales the gradients in place before measuring
    them (so call it before your own ``scaler.unscale_``, gradient clipping or ``fabric.clip_gradients``), and
    steps that overflow while the scaler finds its scale are counted (``amp_overflow_steps``) and kept out of the
    statistics, as under a Trainer. A plain loop calls ``scaler.step(optimizer)`` when :meth:`step` returns
    ``True``, and ``scaler.update()`` at every step; under Fabric, GradWatch updates the scaler itself on a dropped
    step (Fabric does it in ``optimizer.step()``).

    On leaving the ``with`` block the report is written with status ``finished``, or ``failed`` (``interrupted``
    for Ctrl+C and ``SystemExit``) when an exception left it, which then propagates.

    Args:
        session: the engine of the GradWatch (``watch.loop`` passes its own).
        model: the model being trained (a Fabric-wrapped, DDP-wrapped or compiled one too: layers are named after
            the module inside the wrappers).
        log_dir: a directory for TensorBoard event files and ``gradwatch.json``.
        fabric: the loop's ``lightning.fabric.Fabric``.
        scaler: a plain loop's fp16 ``torch.amp.GradScaler`` (under Fabric, its precision plugin's is used).
        steps: the loop's length in optimizer steps, when known: with ``log_every_n_steps`` left to GradWatch, a
            short run charts at least 100 points (a 145-step loop: every step), as under a Trainer.
        optimizers: every optimizer the loop steps, when it steps several (a GAN's discriminator and generator; under
            Fabric, the ones ``fabric.setup`` returned, or those it wrapped): each is then numbered by its place in
            this list and, with two or more, their run-level tags end in ``/optimizer_<i>`` from the first step, as
            under a Trainer. Without it, optimizers are numbered as they first step, and the first one's tags,
            written before a second one is seen, are the plain ones.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``fabric`` not a Fabric, ``scaler`` not a loss scaler,
            ``log_dir`` not a path, ``optimizers`` not a list of optimizers.
        ValueError: ``log_dir`` is a file; ``scaler`` given with ``fabric``; ``optimizers`` is empty, or one of them
            trains none of the model's parameters, or is listed twice.

    Example:
        >>> import tempfile, warnings, torch
        >>> from lightning_gradwatch import GradWatch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> watch = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
        >>> with watch.loop(model, log_dir=tempfile.mkdtemp()) as loop, warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")  # GradWatch's warning kept in `caught` instead of printed
        ...     for step in range(5):
        ...         x = torch.randn(16, 4) * (float("nan") if step == 3 else 1.0)
        ...         loss = model(x).pow(2).mean()
        ...         loss.backward()
        ...         if loop.step(optimizer, loss):
        ...             optimizer.step()
        ...         optimizer.zero_grad()
        >>> [(a.kind, a.step) for a in loop.alerts], loop.global_step
        ([('nonfinite', 3)], 5)
        >>> all(bool(p.isfinite().all()) for p in model.parameters())  # step 3's update was skipped
        True
        >>> [str(w.message).split(" (")[0] for w in caught]  # and said so
        ['Non-finite gradients']
    """

    def __init__(
        self,
        session: Session,
        model: nn.Module,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        fabric: Any = None,
        scaler: Any = None,
        steps: int | None = None,
        optimizers: Sequence[Any] | None = None,
    ) -> None:
        check_int("steps", steps, minimum=1, optional=True)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module (the model being trained), got {type(model).__name__}.")
        settings = session.settings
        self._log_dir = _checked_log_dir(log_dir)
        if fabric is not None:
            check_fabric(fabric, clip=settings.clipping.clip, on_exploding=settings.responses.on_exploding)
            if scaler is not None:
                raise ValueError(
                    "Pass `scaler` only to a plain loop: under Fabric, GradWatch unscales through Fabric's precision"
                    ' plugin (`Fabric(precision="16-mixed")`).'
                )
            self._host: LoopHost = FabricHost(fabric)
        else:
            self._host = LoopHost(_checked_scaler(scaler))
        self._session = session
        self.module = user_module(model)
        self._state = _NEW
        self._step = 0
        self._optimizers: list[Any] = _checked_optimizers(optimizers, self.module)
        self._known = optimizers is not None  # every optimizer named up front: numbered as under a Trainer
        self._alerts: list[GradientAlert] = []
        self._restore: dict[str, Any] | None = None
        self._directory: TensorBoardDirectory | None = None
        self._report_dir: str | None = None
        self._steps = steps

    # ------------------------------------------------------------------ the run
    def __enter__(self) -> WatchedLoop:
        if self._state != _NEW:
            raise RuntimeError("A WatchedLoop runs once: start the next run with another `with watch.loop(...)`.")
        if self._session.fit is not None:
            raise RuntimeError(
                "This GradWatch is already watching a run (a Trainer fit or another loop): use one GradWatch per run."
            )
        measure = self._session.settings.measure
        check_selection(self.module, measure.include, measure.exclude)
        host = self._host
        loggers = list(host.loggers)
        if self._log_dir is not None:
            self._directory = TensorBoardDirectory(self._log_dir)
            loggers.insert(0, self._directory)
        self._report_dir = self._log_dir or (host.log_dir() if host.is_global_zero else None)
        env = loop_environment(self._session.settings, self.module, host, self._report_dir)
        self._session.begin(env, loggers, log_name=host.log_name, owner=id(self))
        schedule = self._session.settings.schedule
        if self._steps is not None:  # a run of known length: its floor of pictures, and its cadence unless chosen
            chosen = schedule.log_every_n_steps is not None
            self._session.retime(
                cadence_for_length(env, self._steps, schedule.histogram_every_n_steps, keep_interval=chosen)
            )
        self._alerts = self._session.alerts
        self._state = _OPEN
        if self._restore is not None:
            self.load_state_dict(self._restore)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._state = _CLOSED
        try:
            if exc is None:
                self._session.end(RunStatus.FINISHED)
            else:
                self._session.fail(exc)
        finally:
            if self._directory is not None:
                self._directory.close()

    def step(self, optimizer: Any, loss: Tensor | float | None = None) -> bool:
        """Measure, judge, write and act on this step's gradients: after ``backward``, before ``optimizer.step()``.

        Args:
            optimizer: the optimizer about to step (its parameters are the ones watched). Several optimizers each
                keep their own schedule; named up front (``watch.loop(..., optimizers=[...])``) they are numbered by
                their place in that list and (two or more) their run-level tags end in ``/optimizer_<i>``; else they are
                numbered in the order they first step, the second and later ones' tags suffixed, the first one's
                the plain tags.
            loss: this step's training loss (one number, unscaled; under gradient accumulation the sum of the
                micro-batches' losses, each divided by their number; ``None``: not known). The rules that tell a
                divergence from a model taking off, and a stalled run from a slowly learning one, read it (medians
                over several steps), and so does the loss ceiling of ``clip="adaptive"`` (without a loss it clips
                outliers only), in the step's one device-to-host transfer, averaged over the processes of a
                distributed job; a Trainer hands them the same loss, so a loop and a Trainer give the same alerts
                and thresholds on the same run.

        Returns:
            ``False`` when GradWatch dropped this step's update (``"skip"``, ``"stop"``): its gradients are gone,
            so ``optimizer.step()`` would change nothing; skip it. ``True`` otherwise (clipped gradients included).

        Raises:
            GradientAlertError: an alert whose response is ``"raise"`` (on every rank).
            RuntimeError: outside the loop's ``with`` block.
            TypeError: ``optimizer`` is not an optimizer; ``loss`` is not a number.
            ValueError: ``optimizer`` trains none of the model's parameters, or is not one of the ``optimizers`` the
                loop named; ``loss`` holds several numbers.
        """
        self._check_open()
        index, count = self._index(optimizer)
        step_loss = _loss_tensor(loss)
        host = self._host
        host.unscale(optimizer)
        try:
            flags = self._session.step(
                host, optimizer, self.module, step=self._step, index=index, count=count, loss=step_loss
            )
        finally:
            self._step += 1
        if flags.skip or flags.stop:
            host.dropped(optimizer)
            return False
        return True

    def _check_open(self) -> None:
        if self._state != _OPEN:
            when = "has not been entered" if self._state == _NEW else "has ended"
            raise RuntimeError(f"This loop {when}: use it inside `with watch.loop(model, ...) as loop:`.")

    def _index(self, optimizer: Any) -> tuple[int, int]:
        """(index, count): its place in ``optimizers`` and their number, else in the order optimizers first step."""
        for i, known in enumerate(self._optimizers):
            if _same_optimizer(known, optimizer):
                return i, len(self._optimizers)
        _check_optimizer(optimizer, self.module)
        if self._known:
            raise ValueError(
                f"This optimizer is none of the {len(self._optimizers)} given to `watch.loop(..., optimizers=...)`:"
                " list every optimizer the loop steps."
            )
        self._optimizers.append(optimizer)
        return len(self._optimizers) - 1, len(self._optimizers)

    # ------------------------------------------------------------------ what it tells
    @property
    def should_stop(self) -> bool:
        """Whether a ``"stop"`` response ended training (on every rank): leave the loop after this step."""
        return self._host.stopped

    @property
    def alerts(self) -> list[GradientAlert]:
        """This loop's alerts, in step order (also ``watch.alerts``, until the GradWatch watches another run)."""
        return self._alerts

    @property
    def global_step(self) -> int:
        """Steps taken so far: the number of :meth:`step` calls (the next step's number)."""
        return self._step

    @property
    def log_dir(self) -> str | None:
        """Where this process writes ``gradwatch.json`` (``None``: nowhere); known once the loop is entered."""
        return self._report_dir

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """GradWatch's state for a checkpoint: detectors, adaptive thresholds, run summary, alerts, step count.

        Plain values (``torch.load(..., weights_only=True)`` reads them back).
        """
        return {**self._session.state_dict(), _STEP_KEY: self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output: before the ``with`` block, or inside it before the first step.

        The resumed loop continues the step count and the detectors as if it had not stopped; its
        :attr:`global_step` and :attr:`alerts` read the restored ones at once.
        """
        if self._state == _NEW:  # applied on entering; read as it will be until then
            self._restore = dict(state)
            self._step = int(state.get(_STEP_KEY, self._step))
            self._alerts = saved_alerts(state)
            return
        self._check_open()
        self._session.load_state_dict(state)
        self._step = int(state.get(_STEP_KEY, self._step))


class TensorBoardDirectory:
    """A log directory as GradWatch's writers see a TensorBoard logger: its ``SummaryWriter``, made on first use.

    Args:
        log_dir: the directory (created when the writer is made).
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._writer: Any = None

    @property
    def description(self) -> str:
        """What a warning calls it."""
        return f"the log directory {self.log_dir}"

    @property
    def experiment(self) -> Any:
        """The directory's ``torch.utils.tensorboard.SummaryWriter``."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars one by one (reached only when the writer could not be made: its error is then reported)."""
        for tag, value in metrics.items():
            self.experiment.add_scalar(tag, value, step)

    def close(self) -> None:
        """Close the event file, when one was opened."""
        if self._writer is not None:
            self._writer.close()


def loop_environment(settings: WatchConfig, module: nn.Module, host: LoopHost, log_dir: str | None) -> Environment:
    """A loop's environment: the host's ranks, shard group and scaler, GradWatch's schedule, the model's traits.

    Scalars every ``log_every_n_steps`` steps, ``None`` taken as Lightning's default (50) until the loop's length
    is known (see :func:`~lightning_gradwatch.engine.environment.cadence_for_length`); histograms as the callback
    (four times that, unless given).
    """
    schedule = settings.schedule
    log_every = schedule.log_every_n_steps or LIGHTNING_LOG_EVERY
    return Environment(
        is_global_zero=host.is_global_zero,
        world_size=host.world_size,
        log_every=log_every,
        hist_every=histogram_interval(log_every, schedule.histogram_every_n_steps),
        log_dir=log_dir,
        plain_group=host.plain_group,
        scaler=host.scaler,
        traits=ModelTraits.from_module(module),
    )


def _checked_log_dir(log_dir: Any) -> str | None:
    if log_dir is None:
        return None
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"`log_dir` must be a path (str or os.PathLike), got {type(log_dir).__name__}.")
    path = os.fspath(log_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"log_dir={path!r} is a file: pass a directory for the TensorBoard event files and gradwatch.json"
            " (it is created when missing)."
        )
    return str(path)


def _checked_scaler(scaler: Any) -> Any:
    """The loss scaler when it is one and enabled, else ``None``."""
    if scaler is None:
        return None
    if not all(callable(getattr(scaler, attr, None)) for attr in ("unscale_", "get_scale", "update")):
        raise TypeError(
            f"`scaler` must be the loop's fp16 loss scaler (`torch.amp.GradScaler`), got {type(scaler).__name__}."
        )
    return scaler if _scaler_enabled(scaler) else None


def _checked_optimizers(optimizers: Sequence[Any] | None, module: nn.Module) -> list[Any]:
    """The optimizers a loop names up front (an empty list when it does not): each an optimizer of the model's."""
    if optimizers is None:
        return []
    if isinstance(optimizers, (str, bytes)) or not isinstance(optimizers, Sequence):
        raise TypeError(
            f"`optimizers` must be a list of the loop's optimizers, got {type(optimizers).__name__}:"
            " `watch.loop(model, optimizers=[opt_d, opt_g])`."
        )
    if not optimizers:
        raise ValueError("`optimizers` is empty: list the optimizers the loop steps, or leave it out.")
    for i, optimizer in enumerate(optimizers):
        _check_optimizer(optimizer, module, f"`optimizers[{i}]`", "list the loop's optimizers")
        if any(_same_optimizer(optimizer, other) for other in optimizers[:i]):
            raise ValueError(f"`optimizers[{i}]` is listed twice: name each optimizer the loop steps once.")
    return list(optimizers)


def _same_optimizer(a: Any, b: Any) -> bool:
    """The same optimizer, either of them maybe wrapped by Fabric (``fabric.setup`` returns a wrapper)."""
    return a is b or inner_optimizer(a) is inner_optimizer(b)


def _check_optimizer(
    optimizer: Any, module: nn.Module, name: str = "`optimizer`", how: str = "call `loop.step(optimizer, loss)`"
) -> None:
    """An optimizer, over at least one of the model's parameters (the layers are named after the model)."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise TypeError(
            f"{name} must be a torch optimizer (with `param_groups`), got {type(optimizer).__name__}: {how}."
        )
    params = [p for group in groups for p in group["params"]]
    owned = {id(p) for p in module.parameters()}
    if params and not any(id(p) in owned for p in params):
        raise ValueError(
            f"{name} steps {len(params)} parameters, none of them the model's: GradWatch watches the parameters"
            " the optimizer steps and names them after the model, so pass the model it trains to `watch.loop`."
        )


def _loss_tensor(loss: Any) -> Tensor | None:
    if loss is None:
        return None
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"`loss` must be one number, got a tensor of shape {tuple(loss.shape)}.")
        return loss.detach()
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return torch.tensor(float(loss))
    raise TypeError(f"`loss` must be a one-element tensor or a number, got {type(loss).__name__}.")
