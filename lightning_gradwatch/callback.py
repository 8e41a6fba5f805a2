"""``GradWatch``: the Lightning adapter around the framework-free engine (``engine/session.py``).

The callback reads the Trainer once per fit (``_environment.py``), hands each optimizer step to the session with the
Trainer as its host (flags reduced over its processes, a stop through ``trainer.should_stop``), and keeps what only
Lightning's hooks tell: the step's training loss (``on_before_backward``: summed over the micro-batches of an
accumulated step, unscaled under an fp16 loss scaler) and the batch index.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from typing import Any, Literal, Union

import torch
from typing_extensions import override

from lightning_gradwatch._environment import (
    TrainerHost,
    check_trainer,
    instance_namespace,
    log_name,
    optimizer_index,
    probe,
    run_cadence,
)
from lightning_gradwatch._lightning import CALLBACK_BASES
from lightning_gradwatch._validation import Granularity
from lightning_gradwatch.alerts import GradientAlert, GradientAlertError
from lightning_gradwatch.config import (
    ClipConfig,
    DetectionConfig,
    MeasureConfig,
    OutputConfig,
    ResponseConfig,
    ScheduleConfig,
    WatchConfig,
)
from lightning_gradwatch.engine.environment import check_selection
from lightning_gradwatch.engine.handoff import Handoff
from lightning_gradwatch.engine.session import Session
from lightning_gradwatch.kinds import ExplodingResponse, NonfiniteResponse, RunStatus, VanishingResponse
from lightning_gradwatch.loop import WatchedLoop
from lightning_gradwatch.write.progress import warn

__all__ = ["ExplodingResponse", "GradWatch", "NonfiniteResponse", "VanishingResponse"]


class GradWatch(*CALLBACK_BASES):  # type: ignore[misc]
    r"""Watch every layer's gradients: TensorBoard charts, early warnings, and automatic responses.

    Gradients are measured in ``on_before_optimizer_step``, the one hook where they are final (accumulated,
    all-reduced, AMP-unscaled, not yet clipped), once per optimizer step, for the parameters of the optimizer being
    stepped (an optimizer whose closure runs several times a step, such as LBFGS's line search, calls the hook after
    each evaluation: the step's first, the gradient at its starting weights, is the one measured, judged and
    clipped). Parameters are grouped into layers by owning module (``encoder.layers.3.self_attn``; a weight under
    ``weight_norm`` or another parametrisation is its module's), so TensorBoard gets one chart line per layer, not
    one per weight and bias.

    Every step: per-layer gradient L2 norms and the total norm, in one fused pass with one device-to-host transfer;
    detection runs on these. Every ``log_every_n_steps`` steps (global rank 0 writes): ``grad_norm/<layer>`` (and its
    ``grad_norm_log10/<layer>``, readable where layers span many decades),
    ``grad_to_weight/<layer>``, ``param_norm/<layer>``, ``grad_max_abs/<layer>``, ``grad_zero_fraction/<layer>``,
    ``gradwatch/total_norm``, ``gradwatch/total_norm_max`` (the largest since the previous log step) and event
    counts. Every ``histogram_every_n_steps`` steps: ``grad_hist/<layer>`` histograms, estimated from a uniform
    random sample of at most ``histogram_sample_size`` values per layer (exact for smaller layers) so their cost
    stays bounded on huge layers, and from the same sample ``grad_hist_log10/<layer>``, histograms of ``log10 |g|``
    over the non-zero values (how many decades apart the layers are). A custom-scalars layout shows each per-layer
    metric as one multi-line chart.
    TensorBoard loggers get all of this as one event per step; any other logger gets the scalars through
    ``log_metrics``. ``gradwatch.json`` (configuration, per-layer summaries, alerts, and the epoch and batch index
    of every skipped, spike-clipped or alerting step) is written beside the event files (the TensorBoard logger's
    ``log_dir``, else ``trainer.log_dir``) at the end of training, when an alert fires, and when training dies with
    an exception. A second GradWatch in the same Trainer writes both into the ``gradwatch-2`` subdirectory.

    Responses, per alert kind: ``"warn"`` records the alert and emits a :class:`GradientWarning` once per episode;
    ``"raise"`` raises :class:`GradientAlertError`; ``"stop"`` ends training after this step on every rank and
    keeps this step's update out of the weights; ``"skip"`` drops the update of every affected step (gradients set
    to ``None``, so the optimizer leaves weights and state such as Adam moments untouched); ``"ignore"`` does
    nothing. Every response except ``"ignore"`` records the alert in :attr:`alerts`, in TensorBoard
    (``gradwatch/alerts``) and in ``gradwatch.json``.

    Without a Trainer, :meth:`loop` watches a training loop you write, plain PyTorch or Lightning Fabric, through the
    same engine: the same charts, alerts, responses and report (this needs no Lightning installed for plain loops).

    Args:
        on_vanishing: response to sustained vanishing gradients: ``"warn"``, ``"raise"``, ``"stop"`` or
            ``"ignore"``.
        on_exploding: response to exploding gradients: ``"warn"``, ``"raise"``, ``"stop"``, ``"skip"``,
            ``"clip"`` or ``"ignore"``. With ``"skip"``, every spike step, and the step an explosion is found
            at, is skipped; with ``"clip"``, every spike step is clipped to the spike threshold and, once an
            explosion is found, every step of its episode to the largest ordinary norm before it (an explosion in
            the first steps comes before any spike threshold); the ordinary steps of a run that does not explode
            are left alone. Either way the alert is recorded once the explosion is sustained. A loss that jumps
            10x at once after an ordinary step, under learning rates that were not raised, and stays up while it is
            learnt is new data (a warm-started model meeting new classes), not an explosion: it is said once (a
            :class:`GradientWarning` and a ``new_data`` notice in ``gradwatch.json``), and the run is judged
            against the new data's loss from then on.
        on_nonfinite: response to NaN/Inf gradients: ``"warn"``, ``"raise"``, ``"stop"``, ``"skip"`` or
            ``"ignore"``. A non-finite gradient reaches the weights only with ``"warn"`` or ``"ignore"``.
        clip: clip the total gradient norm of every step: a number is a fixed maximum norm (as
            ``torch.nn.utils.clip_grad_norm_``); ``"adaptive"`` learns the threshold from the run's own gradient
            norms. The *outlier threshold*: over the last 100 learnt steps of ``log10(total norm)``, the typical
            level is the 25th percentile (at least the lowest of the last 20) and the spread the distance from the
            5th to the 25th; a step more than ``clip_zscore`` spreads (at least 0.1 decade each) above the typical
            level whose training loss is twice the loss level (below) or more is an outlier and is scaled down to
            the typical norm; as high a norm over an ordinary loss (a model leaving a plateau) and other steps are
            held to the threshold (no norm above it is learnt: outliers in most batches do not raise it; during the
            first ``clip_warmup_steps``, only norms over twice the typical one are clipped); a step no larger than the
            lowest of the run's first 10 norms is never clipped, and an outlier is scaled no lower than that (near
            zero loss, the rare hard batches carry the gradient), unless a plateau cut (below) lowered the threshold. A
            *ceiling* from the training loss (``clip_use_loss``, on by default) holds a run that gets worse: when
            the loss level (the 20th percentile of the last 10 losses) is 10% above where the run started, or back
            up by half of its progress, while the norm has risen with it, the ceiling drops below the step's norm
            by 3x or more, at most every 3 steps while the loss keeps rising, never below a tenth of the typical
            norm; on every step the run is not worse it rises back by 0.02 decade (a decade in 50 steps; more on a
            new best of the loss), and it is lifted once far above the outlier threshold; after a divergence (the
            loss level 3x up), only up to half the step size the run diverged at, and ten times slower above it
            until the loss makes new bests. Norms of steps whose loss
            is worse are not learnt, so a norm that grows with the loss from the first step (a recurrent net whose
            gradients explode) never becomes typical. Under ``torch.optim.SGD``, a *step-size cap* from the first step:
            a step may move the weights by at most a tenth of their size (the threshold at most ``0.1 * ||W|| / (lr *
            (1 - dampening) / (1 - momentum))``, ``||W||`` at least the norm PyTorch's default initialisation gives
            the weights, each parameter group's learning rate read at every step, and the highest so far in the
            run: a decaying schedule shrinks a capped step with every other; ``clip_step_ratio``), the one
            scale a run whose norm grows from the first step, or a schedule whose peak is too high, cannot talk
            itself out of; other optimizers (Adam's step does not grow with the gradient) and
            weights that all start at zero are not capped. A *plateau cut*: when half or more of the last 50 steps were
            scaled down 2x or more while the training loss did not fall and its batches scattered (quartiles 0.1
            decade apart or more), the threshold is lowered 2x for good, judged again 50 steps later, at most 100x
            in all; not with ``clip_use_loss=False`` or ``clip_max_norm``. Clipping that hides a failing run is said
            once (a
            :class:`GradientWarning` and ``notices`` in ``gradwatch.json``, not an alert): over the last 50 steps, half
            or more scaled down 2x or more while the loss did not fall, or the clipped norm up a decade, or the ceiling
            below the outlier threshold on all 50; the learning rate is then likely too high.
            ``gradwatch/clip_threshold`` is the norm a step was held to.
            ``None``: no clipping. Clipping acts in ``on_before_optimizer_step`` on the unscaled gradients of the
            watched parameters, before the optimizer step; ``gradwatch/total_norm`` is the norm before (the
            exploding detector judges it), ``gradwatch/clipped_norm`` after. It cannot be combined with
            ``Trainer(gradient_clip_val=...)``. Under manual optimization it works when you step through the
            optimizers Lightning gives you (``self.optimizers()``).
        log_every_n_steps: write scalars every this many optimizer steps (at steps 0, n, 2n, ...).
            ``None``: the Trainer's ``log_every_n_steps``; when that is Lightning's default (50), closer on a run
            too short to get 100 points from it (a 145-step run: every step), which the overhead budget may spread
            out again. ``gradwatch.json`` records the intervals chosen under ``schedule``.
        histogram_every_n_steps: write histograms every this many optimizer steps. ``None``: four times the
            scalar interval; ``0``: no histograms.
        granularity: ``"module"`` (one layer per module that owns parameters) or ``"parameter"``.
        include: regular expression; only parameters whose full name (``encoder.layers.0.linear1.weight``) matches
            are watched.
        exclude: regular expression; parameters whose full name matches are not watched.
        warmup_steps: steps that only build the gradient-norm history.
        exploding_zscore: standard deviations of ``log10(total norm)`` above its running mean that make a spike.
        exploding_min_factor: a spike is at least this many times the running (geometric) mean of the total norm.
        exploding_patience: consecutive spike steps that make an explosion (unless they already fall back, or the
            training loss does not rise with them: median of the last 3 steps against the median 5 to 10 steps
            before); a lone spike is counted, not alerted.
        exploding_growth_steps: consecutive steps of a steady rise (each norm above the one before and above its
            running mean + 2 std, while the training loss rises too, by medians) that make an explosion before any
            single step is extreme: this warns of a divergence several steps before the first NaN.
        exploding_threshold: optional absolute total norm above which a step is always a spike.
        exploding_jump_factor: during the warm-up, before the history can tell a spike, a step whose total norm is
            this many times the largest so far is an explosion, and so are two steps in a row at this many times the
            first step's norm while their loss is 3 times the first loss (a learning rate far too high blows up from
            step 0).
        exploding_trend_loss_factor: an explosion by trend: the training loss (median of the last 5 steps) has
            climbed to this many times its lowest median of the last 75-100 steps, and to twice where training
            started, ...
        exploding_trend_norm_factor: ... while the total norm (median of the last 5 steps) has grown this many
            times since the loss was at that low: how Adam/AdamW diverge at a too-high learning rate, often without
            ever producing a NaN.
        vanishing_ratio: a layer whose norm stays below this fraction of the largest layer's norm is vanishing.
        vanishing_floor: optional absolute per-layer norm below which a layer is vanishing.
        vanishing_patience: consecutive vanishing steps before an alert.
        clip_zscore: for ``clip="adaptive"``, how many spreads of the log norm above its typical level a step is
            an outlier.
        clip_warmup_steps: for ``clip="adaptive"``, first steps during which only norms over twice the typical one
            are clipped as outliers.
        clip_max_norm: for ``clip="adaptive"``, an optional fixed cap that applies on every step, warm-up included
            (refused with any other ``clip``: a fixed maximum norm is ``clip`` itself).
        clip_use_loss: for ``clip="adaptive"``, the ceiling a worsening training loss lowers (see ``clip``): it
            keeps runs whose gradients explode from the first step finite (a vanilla RNN with a recurrent gain
            above 1), where the outlier threshold alone follows the norm up. A noisy early rise of a healthy run's
            loss and norm (small batches) can cut it: the run gets its step size back within about 50 steps of
            its loss being no worse than at its start. Set ``False`` for runs whose loss rises by design (a
            curriculum of harder data, a loss term whose weight grows).
        clip_step_ratio: for ``clip="adaptive"`` under ``torch.optim.SGD``, the step-size cap: a step moves the
            weights by at most this fraction of their size (the threshold at most ``clip_step_ratio * ||W|| /
            (lr * (1 - dampening) / (1 - momentum))``, ``||W||`` over the parameters with a gradient, but at least
            the norm PyTorch's default initialisation gives their weights, so weights drawn or decayed far below it
            can grow; each layer's rate from its parameter group's learning rate, read at every step, and the step's
            rate at least the highest of the run so far, so the cap does not rise as a schedule decays the learning
            rate: it shrinks a capped step as it shrinks every other). A healthy SGD
            step moves the weights by far less; 0.05 held healthy nets back on the clipping families, 0.2 let
            schedule peaks run away. A linear model at a learning rate high enough to move its weights by more than
            their own norm a step (logistic regression at lr 0.5, momentum 0.9) is held back by it, up to 1.12x its
            final loss: give it ``None``, which turns it off. A learning rate held in a tensor on a device is not
            read (no cap).
        amp_overflow_patience: with an fp16 loss scaler, overflow steps are skipped by the scaler and are not
            failures; this many consecutive ones mean the run itself has gone non-finite. Before the run's first
            finite step, a scaler still lowering its scale from a high start (above 1) is recovering, not failing.
        histogram_bins: buckets per histogram.
        histogram_sample_size: values sampled per layer for its histogram.
        max_layers: when a model has more layers than this, layers are merged by name prefix (a transformer block
            instead of its submodules) until at most this many remain, so TensorBoard stays readable; a warning says
            so. ``None``: no limit.
        images: at histogram steps, draw two gradient-flow pictures into TensorBoard's Images tab:
            ``gradwatch/gradient_flow`` (mean and max ``|gradient|`` per layer, log scale, layers in forward order,
            vanishing/exploding/non-finite layers coloured) and ``gradwatch/gradient_heatmap`` (log10 gradient norm,
            layer by step, over the run so far). Both show every layer that had a gradient in the run so far: one
            without a gradient at a step (a branch taken now and then, a frozen layer) keeps its place, empty. Needs
            matplotlib (``lightning-gradwatch[images]``); without it, one warning and no images.
        overhead_budget: the share of the training time GradWatch may take, a fraction in (0, 1] (``0.03``: 3%),
            or ``None`` for no budget. GradWatch times its own work (its hook on the training thread; drawing and
            writing each set of pictures) against the step time it observes (the median time between consecutive
            optimizer steps), and spaces out histograms and pictures to stay within it: histograms to a multiple of
            their interval, pictures to a multiple of that; a scalar interval chosen from the run length (see
            ``log_every_n_steps``) may be spread out too, never past 50 steps nor below 25 points a run. Measuring
            and detection at every step, and scalars at a ``log_every_n_steps`` given to GradWatch or the Trainer,
            are never thinned; neither is an explicit ``histogram_every_n_steps``
            (a warning says when it alone breaks the budget). The first histogram step always gets its histograms
            and pictures; while a picture is being drawn, no other is started; the last histogram step's pictures,
            when left out, are drawn at the end of the fit. ``gradwatch.json`` records what was
            thinned under ``budget``, and a log message says so once.
        progress_bar: show the total gradient norm (``grad_norm``) in the progress bar, and a ``grad_health`` word
            (``vanishing``, ``exploding``, ``non-finite``) while an alert episode lasts.

    Raises:
        ValueError: for an argument outside its allowed values (the message lists them).
        TypeError: for an argument of the wrong type.

    Example:
        >>> import os, tempfile, torch
        >>> import lightning.pytorch as pl
        >>> from lightning_gradwatch.demos import DeepMLP
        >>> _ = torch.manual_seed(0)
        >>> watch = GradWatch(on_exploding="skip", log_every_n_steps=5)
        >>> trainer = pl.Trainer(max_steps=20, callbacks=[watch], default_root_dir=tempfile.mkdtemp(),
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(DeepMLP("relu", batchnorm=True))  # a healthy 11-layer MLP: nothing to report
        >>> watch.alerts
        []
        >>> os.path.isfile(os.path.join(trainer.logger.log_dir, "gradwatch.json"))
        True
    """

    def __init__(
        self,
        on_vanishing: VanishingResponse = ResponseConfig.on_vanishing,
        on_exploding: ExplodingResponse = ResponseConfig.on_exploding,
        on_nonfinite: NonfiniteResponse = ResponseConfig.on_nonfinite,
        clip: Union[float, Literal["adaptive"], None] = ClipConfig.clip,
        log_every_n_steps: int | None = ScheduleConfig.log_every_n_steps,
        histogram_every_n_steps: int | None = ScheduleConfig.histogram_every_n_steps,
        granularity: Granularity = MeasureConfig.granularity,
        include: str | None = MeasureConfig.include,
        exclude: str | None = MeasureConfig.exclude,
        *,
        warmup_steps: int = DetectionConfig.warmup_steps,
        exploding_zscore: float = DetectionConfig.exploding_zscore,
        exploding_min_factor: float = DetectionConfig.exploding_min_factor,
        exploding_patience: int = DetectionConfig.exploding_patience,
        exploding_growth_steps: int = DetectionConfig.exploding_growth_steps,
        exploding_threshold: float | None = DetectionConfig.exploding_threshold,
        exploding_jump_factor: float = DetectionConfig.exploding_jump_factor,
        exploding_trend_loss_factor: float = DetectionConfig.exploding_trend_loss_factor,
        exploding_trend_norm_factor: float = DetectionConfig.exploding_trend_norm_factor,
        vanishing_ratio: float = DetectionConfig.vanishing_ratio,
        vanishing_floor: float | None = DetectionConfig.vanishing_floor,
        vanishing_patience: int = DetectionConfig.vanishing_patience,
        clip_zscore: float = ClipConfig.clip_zscore,
        clip_warmup_steps: int = ClipConfig.clip_warmup_steps,
        clip_max_norm: float | None = ClipConfig.clip_max_norm,
        clip_use_loss: bool = ClipConfig.clip_use_loss,
        clip_step_ratio: float | None = ClipConfig.clip_step_ratio,
        amp_overflow_patience: int = MeasureConfig.amp_overflow_patience,
        histogram_bins: int = MeasureConfig.histogram_bins,
        histogram_sample_size: int = MeasureConfig.histogram_sample_size,
        max_layers: int | None = MeasureConfig.max_layers,
        images: bool = OutputConfig.images,
        overhead_budget: float | None = OutputConfig.overhead_budget,
        progress_bar: bool = OutputConfig.progress_bar,
    ) -> None:
        super().__init__()
        #: the configuration, one checked group per part; each argument also reads back as an attribute
        self.settings = WatchConfig(
            responses=ResponseConfig(on_vanishing=on_vanishing, on_exploding=on_exploding, on_nonfinite=on_nonfinite),
            clipping=ClipConfig(
                clip=clip,
                clip_zscore=clip_zscore,
                clip_warmup_steps=clip_warmup_steps,
                clip_max_norm=clip_max_norm,
                clip_use_loss=clip_use_loss,
                clip_step_ratio=clip_step_ratio,
            ),
            measure=MeasureConfig(
                granularity=granularity,
                include=include,
                exclude=exclude,
                histogram_bins=histogram_bins,
                histogram_sample_size=histogram_sample_size,
                max_layers=max_layers,
                amp_overflow_patience=amp_overflow_patience,
            ),
            schedule=ScheduleConfig(
                log_every_n_steps=log_every_n_steps, histogram_every_n_steps=histogram_every_n_steps
            ),
            output=OutputConfig(progress_bar=progress_bar, images=images, overhead_budget=overhead_budget),
            detection=DetectionConfig(
                warmup_steps=warmup_steps,
                exploding_zscore=exploding_zscore,
                exploding_min_factor=exploding_min_factor,
                exploding_patience=exploding_patience,
                exploding_growth_steps=exploding_growth_steps,
                exploding_threshold=exploding_threshold,
                exploding_jump_factor=exploding_jump_factor,
                exploding_trend_loss_factor=exploding_trend_loss_factor,
                exploding_trend_norm_factor=exploding_trend_norm_factor,
                vanishing_ratio=vanishing_ratio,
                vanishing_floor=vanishing_floor,
                vanishing_patience=vanishing_patience,
            ),
        )
        self._session = Session(self.settings)
        self._handoff = Handoff()  # alerts back from spawned workers (``ddp_spawn``)
        self._loss: torch.Tensor | None = None  # this step's loss so far (its micro-batches'), read with its statistics
        self._batch_idx: int | None = None  # of the batch being trained on, for the report's record of bad batches
        self._first_batch_idx: int | None = None  # ... and of the step's first micro-batch (gradient accumulation)
        self._batches = self._measured = 0  # training batches and measured optimizer steps of this fit
        self._last_measured: tuple[int, int] | None = None  # (global step, optimizer index) of the last measured step
        self._clipping_module: Any = None  # a manual-optimization module whose clip_gradients GradWatch watches
        self._user_clipped = self._said_user_clipped = False  # it clipped before this step was measured (said once)

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        """What identifies the watched parameters: ``granularity``, ``include`` and ``exclude``.

        Identity only, as Lightning's own callbacks: responses, thresholds and schedules may change on resuming.
        """
        measure = self.settings.measure
        return self._generate_state_key(
            granularity=measure.granularity, include=measure.include, exclude=measure.exclude
        )

    @override
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states:  # a checkpoint from a version whose key held the responses too
            older = next((k for k in states if self._identity_of(k) == self._identity()), None)
            if older is not None:
                states[self.state_key] = states[older]

    def _identity(self) -> dict[str, Any]:
        measure = self.settings.measure
        return {"granularity": measure.granularity, "include": measure.include, "exclude": measure.exclude}

    @classmethod
    def _identity_of(cls, key: str) -> dict[str, Any] | None:
        """The watched-parameter identity in an earlier version's state key, else ``None``.

        Earlier versions keyed their state with the arguments they were built with, responses included
        (``GradWatch{'granularity': ..., 'on_vanishing': ...}``).
        """
        name = cls.__qualname__
        if not key.startswith(name + "{"):
            return None
        try:
            arguments = ast.literal_eval(key[len(name) :])
        except (ValueError, SyntaxError):
            return None
        if not isinstance(arguments, dict) or "on_vanishing" not in arguments:
            return None
        return {k: arguments.get(k) for k in ("granularity", "include", "exclude")}

    def __getattr__(self, name: str) -> Any:
        """Each argument reads back as an attribute of the same name (``watch.on_exploding``)."""
        settings = self.__dict__.get("settings")  # absent while unpickling
        if settings is None:
            raise AttributeError(name)
        return settings.argument(name)

    @property
    def detection(self) -> DetectionConfig:
        """The detection thresholds."""
        return self.settings.detection

    def config(self) -> dict[str, Any]:
        """The configuration as plain values (written to ``gradwatch.json``)."""
        return self.settings.to_dict()

    def loop(
        self,
        model: torch.nn.Module,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        fabric: Any = None,
        scaler: Any = None,
        steps: int | None = None,
        optimizers: Sequence[Any] | None = None,
    ) -> WatchedLoop:
        """Watch a training loop you write, plain PyTorch or Lightning Fabric, with this GradWatch's settings.

        Call ``loop.step(optimizer, loss)`` between ``backward`` and ``optimizer.step()``; see
        :class:`~lightning_gradwatch.loop.WatchedLoop` for the output, fp16 and distributed behaviour.

        Args:
            model: the model being trained (layers are named after it, inside Fabric's or DDP's wrapper).
            log_dir: a directory for TensorBoard event files and ``gradwatch.json``.
            fabric: the loop's ``lightning.fabric.Fabric``: its loggers, ranks and precision plugin are used.
            scaler: a plain loop's fp16 ``torch.amp.GradScaler``: gradients are unscaled before measuring.
            steps: how many optimizer steps the loop will take, when known: with ``log_every_n_steps`` left to
                GradWatch, a short run then charts at least 100 points, as under a Trainer (else every 50 steps).
            optimizers: every optimizer the loop steps, when it steps several (under Fabric, those ``fabric.setup``
                returned or those it wrapped): their run-level tags are then ``/optimizer_0``, ``/optimizer_1``, ...
                from the first step, as under a Trainer (without it, the first optimizer's tags are the plain ones:
                a second optimizer is not known before it steps).

        Example:
            >>> import torch
            >>> model = torch.nn.Linear(4, 1)
            >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> watch = GradWatch()
            >>> with watch.loop(model) as loop:  # no log_dir: detection and responses only
            ...     model(torch.randn(8, 4)).pow(2).mean().backward()
            ...     if loop.step(optimizer):
            ...         optimizer.step()
            >>> loop.global_step, watch.alerts
            (1, [])
        """
        return WatchedLoop(
            self._session, model, log_dir=log_dir, fabric=fabric, scaler=scaler, steps=steps, optimizers=optimizers
        )

    @property
    def alerts(self) -> list[GradientAlert]:
        """The alerts recorded so far (every response but ``"ignore"`` records them), in step order.

        Under ``strategy="ddp_spawn"`` (or ``ddp_fork``, ``ddp_notebook``) the fit runs in worker processes; their
        alerts are handed back to this object when the fit has ended.
        """
        handed_back = self._handoff.receive()
        if handed_back is not None:
            self._session.alerts[:] = handed_back
        return self._session.alerts

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._session.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._session.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("log", None)  # the Trainer attaches the module's `log`/`log_dict` to every callback
        state.pop("log_dict", None)
        return state

    # ------------------------------------------------------------------ setup and teardown
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        s = self.settings
        check_trainer(trainer, clip=s.clipping.clip, on_exploding=s.responses.on_exploding)
        env = probe(trainer, pl_module, s.schedule.log_every_n_steps, s.schedule.histogram_every_n_steps)  # every rank
        namespace = instance_namespace(self, trainer.callbacks)
        fit = self._session.begin(env, trainer.loggers, namespace, log_name(trainer), owner=id(trainer))
        self._loss = self._batch_idx = self._first_batch_idx = self._last_measured = None
        self._batches = self._measured = 0
        if not getattr(pl_module, "automatic_optimization", True):
            self._watch_user_clipping(pl_module)
        if s.output.progress_bar and env.is_global_zero:
            fit.progress.attach(trainer)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            if self._clipping_module is not None:
                self._clipping_module.__dict__.pop("clip_gradients", None)
                self._clipping_module = None
            if self._batches and not self._measured and trainer.is_global_zero:
                warn(NO_STEP_MEASURED.format(batches=self._batches))
            self._session.end(_ended(trainer), tuning=not self._batches and _tuning(trainer))
            self._handoff.send(trainer, self._session.alerts)

    def _watch_user_clipping(self, pl_module: Any) -> None:
        """Under manual optimization, know when ``self.clip_gradients`` runs before a step is measured.

        Lightning calls ``on_before_optimizer_step`` inside ``opt.step()``, after any clipping of the user's own:
        GradWatch would see clipped gradients. The module's ``clip_gradients`` is wrapped for the fit (an instance
        attribute, removed at its end) to say so once.
        """
        original = pl_module.clip_gradients

        def clip_gradients(*args: Any, **kwargs: Any) -> Any:
            self._user_clipped = True
            return original(*args, **kwargs)

        pl_module.__dict__["clip_gradients"] = clip_gradients
        self._clipping_module = pl_module

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._session.fail(exception)  # Lightning raises its SIGTERMException, a SystemExit: interrupted
        self._handoff.send(trainer, self._session.alerts)

    # ------------------------------------------------------------------ the step
    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        fit = self._session.fit
        if fit is None or getattr(getattr(trainer, "fit_loop", None), "_skip_backward", False):
            return  # a step without backward (the batch-norm epoch StochasticWeightAveraging adds): nothing to watch
        index, count = optimizer_index(trainer, optimizer)
        step = int(trainer.global_step)
        loss, self._loss = self._loss, None
        first, self._first_batch_idx = self._first_batch_idx, None
        if (step, index) == self._last_measured:
            return  # LBFGS: a further closure evaluation of the step's line search (only the step's first is judged)
        self._last_measured = (step, index)
        self._measured += 1
        if self._user_clipped and not self._said_user_clipped and trainer.is_global_zero:
            warn(CLIPPED_BEFORE_MEASURED)
            self._said_user_clipped = True
        self._user_clipped = False
        where: dict[str, Any] = {"epoch": int(trainer.current_epoch), "batch_idx": self._batch_idx}
        if first is not None and first != self._batch_idx:  # accumulated: the micro-batches first_batch_idx..batch_idx
            where["first_batch_idx"] = first
        host = TrainerHost(trainer, fit.env)
        if loss is not None and fit.env.scaler is not None:  # the loss backward saw was scaled; no sync to unscale it
            loss = loss / fit.env.scaler.scale(torch.ones((), device=loss.device))
        try:
            self._session.step(host, optimizer, pl_module, step=step, index=index, count=count, loss=loss, where=where)
        except GradientAlertError:  # handed back now: under ddp_spawn another rank's exit may end this one
            self._handoff.send(trainer, self._session.alerts)
            raise

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        fit = self._session.fit
        if fit is not None:
            measure = self.settings.measure
            check_selection(pl_module, measure.include, measure.exclude)  # the model is built by now
            schedule = self.settings.schedule
            env = run_cadence(fit.env, trainer, schedule.log_every_n_steps, schedule.histogram_every_n_steps)
            self._session.retime(env)  # every rank

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx
        if self._first_batch_idx is None:
            self._first_batch_idx = batch_idx
        self._batches += 1

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # the loss about to be backpropagated: under accumulation each micro-batch's, divided by their number (their
        # sum is the step's loss); no sync here, it travels with the step's statistics
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().reshape(())
            self._loss = loss if self._loss is None else self._loss + loss


#: said once at the end of a fit whose training batches never reached an optimizer step GradWatch could measure
NO_STEP_MEASURED = (
    "GradWatch measured no optimizer step in this fit ({batches} training batches ran): Lightning never called "
    "on_before_optimizer_step, so no gradient was watched, judged or clipped. Under manual optimization, step the "
    "optimizer self.optimizers() returns (opt.step()), not the torch optimizer inside it (opt.optimizer.step()). "
    "`gradwatch check` gives such a run the verdict `unmeasured` (exit code 3)."
)


#: said once when, under manual optimization, ``self.clip_gradients`` ran before GradWatch measured the step
CLIPPED_BEFORE_MEASURED = (
    "self.clip_gradients(...) ran before GradWatch measured this step: under manual optimization Lightning calls "
    "on_before_optimizer_step inside opt.step(), after your clipping, so GradWatch sees clipped gradients (its norms "
    "are the clipped ones, and exploding gradients are hidden from its detector). Let GradWatch clip instead: "
    'GradWatch(clip=<max norm>) or GradWatch(clip="adaptive") measures the gradients first, then clips them at '
    "the same point."
)


#: Lightning's callbacks behind ``Tuner.lr_find`` and ``Tuner.scale_batch_size``: their search runs the fit loop with
#: the Trainer's callbacks swapped out, then ends the fit
_TUNERS = ("LearningRateFinder", "BatchSizeFinder")


def _tuning(trainer: Any) -> bool:
    """Whether the Trainer has a tuner's callback (a fit GradWatch saw no batch of was then its search)."""
    return any(c.__name__ in _TUNERS for cb in getattr(trainer, "callbacks", ()) for c in type(cb).__mro__)


def _ended(trainer: Any) -> RunStatus:
    """How a fit that reached ``teardown`` ended, from Lightning's ``TrainerStatus`` (a string enum).

    Teardown runs while the Trainer still says ``running``: the fit finished. A status that is none of ours is taken
    as finished too.
    """
    status = getattr(getattr(trainer, "state", None), "status", None)
    value = str(getattr(status, "value", status)).lower()
    return RunStatus.INTERRUPTED if value == RunStatus.INTERRUPTED else RunStatus.FINISHED
