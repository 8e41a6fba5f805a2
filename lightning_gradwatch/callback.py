"""``GradWatch``: the Lightning callback. Hook wiring, schedule, rank handling and responses; the work is elsewhere."""

from __future__ import annotations

import atexit
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from typing_extensions import override

from lightning_gradwatch import __version__
from lightning_gradwatch._lightning import CALLBACK_BASES, MISSING_LIGHTNING
from lightning_gradwatch.alerts import (
    GradientAlert,
    GradientAlertError,
    GradientWarning,
    ModelTraits,
    format_layers,
    remedies,
)
from lightning_gradwatch.clipping import AdaptiveClipThreshold, clip_coefficient
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector, Verdict
from lightning_gradwatch.pictures import (
    BackgroundDrawing,
    gradient_flow_png,
    gradient_heatmap_png,
    matplotlib_available,
)
from lightning_gradwatch.report import RunSummary, build_report, write_report
from lightning_gradwatch.stats import GRANULARITIES, GradientStats, Granularity, layer_name
from lightning_gradwatch.writers import Writers, histogram_tags, step_scalars

VanishingResponse = Literal["warn", "raise", "stop", "ignore"]
ExplodingResponse = Literal["warn", "raise", "stop", "skip", "clip", "ignore"]
NonfiniteResponse = Literal["warn", "raise", "stop", "skip", "ignore"]
_RESPONSES: dict[str, tuple[str, ...]] = {
    "on_vanishing": ("warn", "raise", "stop", "ignore"),
    "on_exploding": ("warn", "raise", "stop", "skip", "clip", "ignore"),
    "on_nonfinite": ("warn", "raise", "stop", "skip", "ignore"),
}
_MAX_ALERTS_KEPT = 1000  # per run: the first ones are kept (the first failure matters most), the rest counted


_DRAWING_TIMEOUT = 60.0  # seconds the end of a fit waits for the last gradient-flow pictures


@dataclass
class _Run:
    """Everything that lives for one ``fit``: released at teardown, never pickled."""

    log_every: int
    hist_every: int
    is_global_zero: bool
    world_size: int
    log_dir: str | None
    writers: Writers | None
    traits: ModelTraits
    exempt: frozenset[str]
    amp_scaler: Any
    collectors: dict[int, tuple[int, GradientStats]] = field(default_factory=dict)
    interval_max: dict[int, float] = field(default_factory=dict)
    amp_overflow_run: int = 0
    report_failed: bool = False
    images: bool = False
    drawing: BackgroundDrawing | None = None
    warned_no_gradients: bool = False
    weights_nonfinite: bool = False
    loss: torch.Tensor | None = None  # the last training loss, read with the next step's statistics
    plain_group: Any = None  # FSDP1: the process group over which plain gradients are sharded
    last_total_norm: float = math.nan
    health: str = "ok"
    progress_bar: Any = None


class GradWatch(*CALLBACK_BASES):  # type: ignore[misc]
    r"""Watch every layer's gradients: TensorBoard charts, early warnings, and automatic responses.

    Gradients are measured in ``on_before_optimizer_step``, the one hook where they are final (accumulated,
    all-reduced, AMP-unscaled, not yet clipped), once per optimizer step, for the parameters of the optimizer being
    stepped. Parameters are grouped into layers by owning module (``encoder.layers.3.self_attn``), so TensorBoard
    gets one chart line per layer, not one per weight and bias.

    Every step: per-layer gradient L2 norms and the total norm, in one fused pass with one device-to-host transfer;
    detection runs on these. Every ``log_every_n_steps`` steps (global rank 0 writes): ``grad_norm/<layer>``,
    ``grad_to_weight/<layer>``, ``param_norm/<layer>``, ``grad_max_abs/<layer>``, ``grad_zero_fraction/<layer>``,
    ``gradwatch/total_norm``, ``gradwatch/total_norm_max`` (the largest since the previous log step) and event
    counts. Every ``histogram_every_n_steps`` steps: ``grad_hist/<layer>`` histograms, estimated from a uniform
    random sample of at most ``histogram_sample_size`` values per layer (exact for smaller layers) so their cost
    stays bounded on huge layers. A custom-scalars layout shows each per-layer metric as one multi-line chart.
    TensorBoard loggers get all of this as one event per step; any other logger gets the scalars through
    ``log_metrics``. ``gradwatch.json`` (configuration, per-layer summaries, alerts) is written beside the event
    files (the TensorBoard logger's ``log_dir``, else ``trainer.log_dir``) at the end of training, when an alert
    fires, and when training dies with an exception.

    Responses, per alert kind: ``"warn"`` records the alert and emits a :class:`GradientWarning` once per episode;
    ``"raise"`` raises :class:`GradientAlertError`; ``"stop"`` ends training after this step on every rank and
    keeps this step's update out of the weights; ``"skip"`` drops the update of every affected step (gradients set
    to ``None``, so the optimizer leaves weights and state such as Adam moments untouched); ``"ignore"`` does
    nothing. Every response except ``"ignore"`` records the alert in :attr:`alerts`, in TensorBoard
    (``gradwatch/alerts``) and in ``gradwatch.json``.

    Args:
        on_vanishing: response to sustained vanishing gradients: ``"warn"``, ``"raise"``, ``"stop"`` or
            ``"ignore"``.
        on_exploding: response to exploding gradients: ``"warn"``, ``"raise"``, ``"stop"``, ``"skip"``,
            ``"clip"`` or ``"ignore"``. With ``"skip"``, every spike step is skipped; with ``"clip"``, every spike
            step is clipped to the spike threshold and ordinary steps are left alone. Either way the alert is
            recorded once the explosion is sustained.
        on_nonfinite: response to NaN/Inf gradients: ``"warn"``, ``"raise"``, ``"stop"``, ``"skip"`` or
            ``"ignore"``. A non-finite gradient reaches the weights only with ``"warn"`` or ``"ignore"``.
        clip: clip the total gradient norm of every step: a number is a fixed maximum norm (as
            ``torch.nn.utils.clip_grad_norm_``); ``"adaptive"`` learns the threshold from the run's own norm history,
            robustly: over the last 100 steps of ``log10(total norm)``, the typical level is the 25th percentile and
            the spread the distance from the 5th to the 25th, both out of reach of outliers (always high) until they
            fill three quarters of the window. A step above ``clip_zscore`` spreads (at least 0.1 decade each) over
            the typical level is an outlier and is scaled down to the typical norm; other steps are not touched.
            Clipping starts at the second step, with a margin of at least ten times the typical norm during the first
            ``clip_warmup_steps``. ``gradwatch/clip_threshold`` is the norm a step was held to: the typical norm on
            a clipped step, the outlier threshold on the others. ``None``: no clipping.
            Clipping acts in ``on_before_optimizer_step`` on the unscaled gradients of the watched parameters,
            before the optimizer step; ``gradwatch/total_norm`` is the norm before, ``gradwatch/clipped_norm``
            after. It cannot be combined with ``Trainer(gradient_clip_val=...)``. Under manual optimization it
            works when you step through the optimizers Lightning gives you (``self.optimizers()``).
        log_every_n_steps: write scalars every this many optimizer steps (at steps 0, n, 2n, ...).
            ``None``: the Trainer's ``log_every_n_steps``.
        histogram_every_n_steps: write histograms every this many optimizer steps. ``None``: four times the
            scalar interval; ``0``: no histograms.
        granularity: ``"module"`` (one layer per module that owns parameters) or ``"parameter"``.
        include: regular expression; only parameters whose full name (``encoder.layers.0.linear1.weight``) matches
            are watched.
        exclude: regular expression; parameters whose full name matches are not watched.
        warmup_steps: steps that only build the gradient-norm history.
        exploding_zscore: standard deviations of ``log10(total norm)`` above its running mean that make a spike.
        exploding_min_factor: a spike is at least this many times the running (geometric) mean of the total norm.
        exploding_patience: consecutive spike steps that make an explosion (unless they already fall back fast); a
            lone spike is counted, not alerted.
        exploding_growth_steps: consecutive steps of a steady rise (each norm above the one before and above its
            running mean + 2 std, while the training loss rises too) that make an explosion before any single step
            is extreme: this warns of a divergence several steps before the first NaN.
        exploding_threshold: optional absolute total norm above which a step is always a spike.
        vanishing_ratio: a layer whose norm stays below this fraction of the largest layer's norm is vanishing.
        vanishing_floor: optional absolute per-layer norm below which a layer is vanishing.
        vanishing_patience: consecutive vanishing steps before an alert.
        clip_zscore: for ``clip="adaptive"``, how many spreads of the log norm above its typical level a step is
            an outlier.
        clip_warmup_steps: for ``clip="adaptive"``, first steps during which only norms over ten times the typical
            one are clipped.
        clip_max_norm: for ``clip="adaptive"``, an optional fixed cap that applies on every step, warm-up included.
        amp_overflow_patience: with an fp16 loss scaler, overflow steps are skipped by the scaler and are not
            failures; this many consecutive ones mean the run itself has gone non-finite.
        histogram_bins: buckets per histogram.
        histogram_sample_size: values sampled per layer for its histogram.
        max_layers: when a model has more layers than this, layers are merged by name prefix (a transformer block
            instead of its submodules) until at most this many remain, so TensorBoard stays readable; a warning says
            so. ``None``: no limit.
        images: at histogram steps, draw two gradient-flow pictures into TensorBoard's Images tab:
            ``gradwatch/gradient_flow`` (mean and max ``|gradient|`` per layer, log scale, layers in forward order,
            vanishing/exploding/non-finite layers coloured) and ``gradwatch/gradient_heatmap`` (log10 gradient norm,
            layer by logged step, over the run so far). Needs matplotlib (``lightning-gradwatch[images]``); without
            it, one warning and no images.
        progress_bar: show the total gradient norm (``grad_norm``) in the progress bar, and a ``grad_health`` word
            (``vanishing``, ``exploding``, ``non-finite``) while an alert episode lasts.

    Raises:
        ValueError: for an argument outside its allowed values (the message lists them).
        TypeError: for an argument of the wrong type.
        ModuleNotFoundError: when neither ``lightning`` nor ``pytorch-lightning`` is installed.

    Example:
        >>> import tempfile
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> watch = GradWatch(on_exploding="skip", log_every_n_steps=5)
        >>> trainer = pl.Trainer(max_steps=10, callbacks=[watch], default_root_dir=tempfile.mkdtemp(),
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(BoringModel())
        >>> watch.alerts
        []
        >>> os.path.isfile(os.path.join(trainer.logger.log_dir, "gradwatch.json"))
        True
    """

    def __init__(
        self,
        on_vanishing: VanishingResponse = "warn",
        on_exploding: ExplodingResponse = "warn",
        on_nonfinite: NonfiniteResponse = "stop",
        clip: Union[float, Literal["adaptive"], None] = None,
        log_every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = None,
        granularity: Granularity = "module",
        include: str | None = None,
        exclude: str | None = None,
        *,
        warmup_steps: int = 10,
        exploding_zscore: float = 4.0,
        exploding_min_factor: float = 3.0,
        exploding_patience: int = 2,
        exploding_growth_steps: int = 4,
        exploding_threshold: float | None = None,
        vanishing_ratio: float = 1e-5,
        vanishing_floor: float | None = None,
        vanishing_patience: int = 50,
        clip_zscore: float = 3.0,
        clip_warmup_steps: int = 25,
        clip_max_norm: float | None = None,
        amp_overflow_patience: int = 20,
        histogram_bins: int = 64,
        histogram_sample_size: int = 4096,
        max_layers: int | None = 256,
        images: bool = True,
        progress_bar: bool = True,
    ) -> None:
        if not CALLBACK_BASES:
            raise ModuleNotFoundError(MISSING_LIGHTNING)
        super().__init__()
        for name, value in (("on_vanishing", on_vanishing), ("on_exploding", on_exploding)):
            _check_choice(name, value, _RESPONSES[name])
        _check_choice("on_nonfinite", on_nonfinite, _RESPONSES["on_nonfinite"])
        _check_clip(clip)
        _check_number("clip_zscore", clip_zscore)
        _check_int("clip_warmup_steps", clip_warmup_steps, minimum=0)
        if clip_max_norm is not None:
            _check_number("clip_max_norm", clip_max_norm)
        for name, value in (("log_every_n_steps", log_every_n_steps),):
            if value is not None:
                _check_int(name, value, minimum=1)
        if histogram_every_n_steps is not None:
            _check_int("histogram_every_n_steps", histogram_every_n_steps, minimum=0)
        _check_choice("granularity", granularity, GRANULARITIES)
        for name, pattern in (("include", include), ("exclude", exclude)):
            _check_pattern(name, pattern)
        _check_int("amp_overflow_patience", amp_overflow_patience, minimum=1)
        _check_int("histogram_bins", histogram_bins, minimum=1)
        _check_int("histogram_sample_size", histogram_sample_size, minimum=1)
        if max_layers is not None:
            _check_int("max_layers", max_layers, minimum=1)
        self.detection = DetectionConfig(
            warmup_steps=warmup_steps,
            exploding_zscore=exploding_zscore,
            exploding_min_factor=exploding_min_factor,
            exploding_patience=exploding_patience,
            exploding_growth_steps=exploding_growth_steps,
            exploding_threshold=exploding_threshold,
            vanishing_ratio=vanishing_ratio,
            vanishing_floor=vanishing_floor,
            vanishing_patience=vanishing_patience,
        )
        self.on_vanishing = on_vanishing
        self.on_exploding = on_exploding
        self.on_nonfinite = on_nonfinite
        self.clip = clip
        self.clip_zscore = clip_zscore
        self.clip_warmup_steps = clip_warmup_steps
        self.clip_max_norm = clip_max_norm
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.granularity = granularity
        self.include = include
        self.exclude = exclude
        self.amp_overflow_patience = amp_overflow_patience
        self.histogram_bins = histogram_bins
        self.histogram_sample_size = histogram_sample_size
        self.max_layers = max_layers
        self.progress_bar = bool(progress_bar)
        self.images = bool(images)
        self.alerts: list[GradientAlert] = []
        self._detectors: dict[int, GradientDetector] = {}
        self._clippers: dict[int, AdaptiveClipThreshold] = {}
        self._pending_state: dict[str, Any] = {}
        self._pending_clip_state: dict[str, Any] = {}
        self._summary = RunSummary()
        self._run: _Run | None = None

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        """Distinct per configuration, so two GradWatch callbacks in one Trainer keep separate state.

        The key holds what is measured and how it is answered; thresholds, schedules and display settings may
        change between a run and its resumption.
        """
        return self._generate_state_key(
            granularity=self.granularity,
            include=self.include,
            exclude=self.exclude,
            on_vanishing=self.on_vanishing,
            on_exploding=self.on_exploding,
            on_nonfinite=self.on_nonfinite,
            clip=self.clip,
        )

    def config(self) -> dict[str, Any]:
        """The configuration as plain values (written to ``gradwatch.json``)."""
        return {
            "on_vanishing": self.on_vanishing,
            "on_exploding": self.on_exploding,
            "on_nonfinite": self.on_nonfinite,
            "clip": self.clip,
            "clip_zscore": self.clip_zscore,
            "clip_warmup_steps": self.clip_warmup_steps,
            "clip_max_norm": self.clip_max_norm,
            "log_every_n_steps": self.log_every_n_steps,
            "histogram_every_n_steps": self.histogram_every_n_steps,
            "granularity": self.granularity,
            "include": self.include,
            "exclude": self.exclude,
            "amp_overflow_patience": self.amp_overflow_patience,
            "histogram_bins": self.histogram_bins,
            "histogram_sample_size": self.histogram_sample_size,
            "max_layers": self.max_layers,
            "progress_bar": self.progress_bar,
            "images": self.images,
            **self.detection.to_dict(),
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "detectors": {str(k): d.state_dict() for k, d in self._detectors.items()},
            "clippers": {str(k): c.state_dict() for k, c in self._clippers.items()},
            "summary": self._summary.state_dict(),
            "alerts": [a.to_dict() for a in self.alerts],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict.get("detectors", {}))
        for key, det in self._detectors.items():
            if str(key) in self._pending_state:
                det.load_state_dict(self._pending_state.pop(str(key)))
        self._pending_clip_state = dict(state_dict.get("clippers", {}))
        for key, clipper in self._clippers.items():
            if str(key) in self._pending_clip_state:
                clipper.load_state_dict(self._pending_clip_state.pop(str(key)))
        self._summary = RunSummary()
        self._summary.load_state_dict(state_dict.get("summary", {}))
        self.alerts = [GradientAlert.from_dict(a) for a in state_dict.get("alerts", [])]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"] = None  # parameters, loggers and event writers belong to one fit
        state.pop("log", None)  # the Trainer attaches the module's `log`/`log_dict` to every callback
        state.pop("log_dict", None)
        return state

    # ------------------------------------------------------------------ setup and teardown
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        strategy_name = type(trainer.strategy).__name__
        if "DeepSpeed" in strategy_name:
            raise RuntimeError(
                f"GradWatch does not support {strategy_name}: DeepSpeed ZeRO keeps gradients in its own partitioned"
                " buffers and leaves `param.grad` empty, so every norm would read as zero. Use DDP, FSDP"
                " (`FSDPStrategy`) or `ModelParallelStrategy` (FSDP2), or remove GradWatch from this run."
            )
        log_every = self.log_every_n_steps or max(int(getattr(trainer, "log_every_n_steps", 50) or 50), 1)
        hist_every = 4 * log_every if self.histogram_every_n_steps is None else self.histogram_every_n_steps
        log_dir = _log_dir(trainer)  # a collective on some strategies: every rank calls it
        writers = Writers(trainer.loggers) if trainer.is_global_zero else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        clips_too = self.clip is not None or self.on_exploding == "clip"
        if clips_too and getattr(trainer, "gradient_clip_val", None):
            raise ValueError(
                f"GradWatch(clip={self.clip!r}, on_exploding={self.on_exploding!r}) clips gradients, and so does"
                f" Trainer(gradient_clip_val={trainer.gradient_clip_val!r}): use one of them. GradWatch's clipping"
                ' logs the norm before and after and can learn its threshold (clip="adaptive").'
            )
        self.alerts = []
        self._detectors = {}
        self._clippers = {}
        self._pending_state = {}
        self._pending_clip_state = {}
        self._summary = RunSummary()
        self._run = _Run(
            log_every=log_every,
            hist_every=hist_every,
            is_global_zero=bool(trainer.is_global_zero),
            world_size=int(trainer.world_size),
            log_dir=log_dir,
            writers=writers,
            traits=ModelTraits.from_module(pl_module),
            exempt=_exempt_layers(pl_module, self.granularity),
            amp_scaler=scaler,
            plain_group=_plain_shard_group(trainer),
        )
        if self.images and hist_every > 0 and writers is not None and writers.wants_images:
            if matplotlib_available():
                self._run.images = True
                self._run.drawing = BackgroundDrawing()
            else:
                warnings.warn(
                    "GradWatch draws its gradient-flow images with matplotlib, which is not installed: `pip install"
                    " matplotlib` (or `lightning-gradwatch[images]`), or pass `images=False`. Everything else works"
                    " without it.",
                    GradientWarning,
                    stacklevel=2,
                )
        if self.progress_bar and trainer.is_global_zero:
            self._attach_progress_bar(trainer)
        if trainer.is_global_zero:
            # a rank that dies under `ddp_spawn` never sees `on_exception` (the parent handles it): at least flush
            # the logs and write the report when its interpreter exits
            atexit.register(self._at_exit)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or self._run is None:
            return
        status = str(getattr(getattr(trainer, "state", None), "status", "finished")).split(".")[-1].lower()
        self._finish(status if status != "running" else "finished")
        self._run = None

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._run is None:
            return
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._finish(status, error=f"{type(exception).__name__}: {exception}")
        self._run = None

    def _attach_progress_bar(self, trainer: Any) -> None:
        """Add the gradient norm and health to the progress bar's items (no cost per step: read at refresh)."""
        bar = getattr(trainer, "progress_bar_callback", None)
        original = getattr(bar, "get_metrics", None)
        if bar is None or not callable(original):
            return
        run = self._run

        def get_metrics(trainer: Any, pl_module: Any) -> dict[str, Any]:
            items = dict(original(trainer, pl_module))
            if run is not None and math.isfinite(run.last_total_norm):
                items["grad_norm"] = f"{run.last_total_norm:.3g}"
            if run is not None and run.health != "ok":
                items["grad_health"] = run.health
            return items

        bar.get_metrics = get_metrics
        assert run is not None
        run.progress_bar = bar

    def _at_exit(self) -> None:
        if self._run is not None:
            self._finish("failed", error="the process exited during training")
            self._run = None

    def _finish(self, status: str, error: str | None = None) -> None:
        run = self._run
        if run is None:
            return
        atexit.unregister(self._at_exit)
        if run.progress_bar is not None:
            run.progress_bar.__dict__.pop("get_metrics", None)
            run.progress_bar = None
        if not run.is_global_zero:
            return
        if run.drawing is not None:
            self._write_drawn(run, run.drawing.close(timeout=_DRAWING_TIMEOUT))
            if run.drawing.dropped:
                warnings.warn(
                    f"GradWatch left out {run.drawing.dropped} gradient-flow picture(s): they were asked for faster"
                    " than matplotlib draws them. A larger `histogram_every_n_steps`, or `images=False`, avoids this.",
                    GradientWarning,
                    stacklevel=2,
                )
        if run.writers:
            run.writers.flush()
        self._write_report(status, error)

    def _write_report(self, status: str, error: str | None = None) -> None:
        run = self._run
        if run is None or not run.is_global_zero or run.log_dir is None or run.report_failed:
            return
        doc = build_report(
            version=__version__,
            status=status,
            config=self.config(),
            summary=self._summary,
            alerts=self.alerts,
            error=error,
        )
        try:
            write_report(run.log_dir, doc)
        except OSError as err:
            run.report_failed = True
            warnings.warn(
                f"GradWatch could not write gradwatch.json to {run.log_dir} ({err}). Training continues; the alerts"
                " are still in `GradWatch.alerts` and the logs.",
                GradientWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the step
    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        run = self._run
        if run is None:
            return
        step = int(trainer.global_step)
        if run.drawing is not None and run.drawing.ready:
            self._write_drawn(run, run.drawing.collect())
        opt_idx = _optimizer_index(trainer, optimizer)
        collector = self._collector(run, opt_idx, optimizer, pl_module)
        log_now = step % run.log_every == 0
        hist_now = run.hist_every > 0 and step % run.hist_every == 0
        write_here = run.is_global_zero and bool(run.writers)
        measure_all = write_here or collector.sharded  # sharded statistics are collectives: every rank joins in
        # 1. measure: one fused pass, one device-to-host transfer
        stats = collector.collect(
            extended=(log_now or hist_now) and measure_all,
            histograms=hist_now and measure_all,
            extra=() if run.loss is None else (run.loss,),
        )
        if stats is None:
            if run.is_global_zero and not run.warned_no_gradients:
                run.warned_no_gradients = True
                warnings.warn(
                    f"GradWatch found no gradient on the watched parameters of optimizer {opt_idx} at step {step}"
                    " (all frozen or unused, or the step skipped its backward). Such steps are not measured.",
                    GradientWarning,
                    stacklevel=2,
                )
            return
        if run.amp_scaler is not None and not stats.finite and _scaler_enabled(run.amp_scaler):
            run.amp_overflow_run += 1
            self._summary.count("amp_overflow_steps")
            if run.amp_overflow_run < self.amp_overflow_patience:
                return  # the scaler skips this step and lowers its scale: not a failure, not a statistic
        else:
            run.amp_overflow_run = 0
        # 2. judge
        detector = self._detector(run, opt_idx)
        if stats.extra:
            detector.observe_loss(stats.extra[0])
        verdict = detector.update(step, stats)
        self._check_weights(run, step, stats, verdict, opt_idx)
        suffix = f"/optimizer_{opt_idx}" if len(getattr(trainer, "optimizers", ())) > 1 else ""
        self._summary.add_step(step, stats, key=suffix.lstrip("/"), logged=log_now)
        if stats.finite:
            run.interval_max[opt_idx] = max(run.interval_max.get(opt_idx, 0.0), stats.total_norm)
        run.last_total_norm = stats.total_norm
        run.health = _health(verdict, detector)
        if verdict.spike:
            self._summary.count("spike_steps")
        # 3. decide, every rank together
        skip, stop, fail = self._respond(verdict)
        skip, stop, fail = _reduce_decisions(trainer, run, skip, stop, fail)
        # 4. act on the gradients
        clip = None
        if skip or stop:
            _drop_gradients(optimizer)
            self._summary.count("skipped_steps")
        elif stats.finite:
            clip = self._clip(opt_idx, stats.total_norm, verdict, collector)
        # 5. write (global rank 0)
        if write_here and (log_now or hist_now):
            self._write_step(run, step, stats, opt_idx, suffix, detector, clip, with_scalars=log_now)
            if hist_now and run.images:
                self._write_images(run, step, stats, verdict, suffix)
        if stop:
            trainer.should_stop = True
        if fail:
            alert = next((a for a in verdict.alerts if self._response(a.kind) == "raise"), None)
            if alert is None:
                message = "A gradient alert was raised on another rank"
                alert = GradientAlert("nonfinite", step, (), math.nan, 0.0, message)
            if run.writers:
                run.writers.flush()
            self._write_report("failed", error=alert.message.splitlines()[0])
            raise GradientAlertError(alert)

    def _check_weights(self, run: _Run, step: int, stats: Any, verdict: Verdict, opt_idx: int) -> None:
        """On steps that measure parameter norms: NaN/Inf in the weights themselves is a non-finite alert."""
        if stats.param_norm is None:
            return
        bad = tuple(n for n, v in zip(stats.layers, stats.param_norm) if not math.isfinite(v))
        if not bad:
            run.weights_nonfinite = False
            return
        if run.weights_nonfinite:
            return
        run.weights_nonfinite = True
        message = (
            f"Non-finite weights (NaN/Inf) at step {step} in {format_layers(bad)}: the parameters themselves are"
            ' corrupted, not only a gradient. An earlier non-finite update reached them (on_nonfinite="warn" or'
            ' "ignore"), or they were loaded or initialised that way.\nRemedies:\n'
            + "\n".join(f"  - {h}" for h in remedies("nonfinite", run.traits))
        )
        alert = GradientAlert("nonfinite", step, bad, math.nan, 0.0, message, opt_idx, {"what": "weights"})
        verdict.alerts.append(alert)

    def _clip(
        self, opt_idx: int, total_norm: float, verdict: Verdict, collector: GradientStats
    ) -> tuple[float, float] | None:
        """Clip this step's gradients when configured; returns (threshold, norm after clipping)."""
        threshold = math.inf
        if self.clip == "adaptive":
            clipper = self._clippers.get(opt_idx)
            if clipper is None:
                clipper = self._clippers[opt_idx] = self._new_clipper(opt_idx)
            threshold = clipper.update(total_norm)
        elif self.clip is not None:
            threshold = float(self.clip)
        if verdict.spike and self.on_exploding == "clip":
            threshold = min(threshold, verdict.spike_threshold)
        if self.clip is None and not math.isfinite(threshold):
            return None
        coefficient = clip_coefficient(total_norm, threshold)
        if coefficient < 1.0:
            collector.scale_(coefficient)
            self._summary.count("clipped_steps")
        return threshold, total_norm * coefficient

    def _new_clipper(self, opt_idx: int) -> AdaptiveClipThreshold:
        clipper = AdaptiveClipThreshold(
            zscore=self.clip_zscore, warmup_steps=self.clip_warmup_steps, max_norm=self.clip_max_norm
        )
        pending = self._pending_clip_state.pop(str(opt_idx), None)
        if pending is not None:
            clipper.load_state_dict(pending)
        return clipper

    def _response(self, kind: str) -> str:
        return {"vanishing": self.on_vanishing, "exploding": self.on_exploding, "nonfinite": self.on_nonfinite}[kind]

    def _respond(self, verdict: Verdict) -> tuple[bool, bool, bool]:
        """Record alerts and decide this rank's (skip, stop, raise)."""
        run = self._run
        assert run is not None
        skip = stop = fail = False
        if verdict.nonfinite and self.on_nonfinite in ("skip", "stop", "raise"):
            skip = True
        if verdict.spike and self.on_exploding == "skip":
            skip = True
        for alert in verdict.alerts:
            response = self._response(alert.kind)
            if response == "ignore":
                continue
            if len(self.alerts) < _MAX_ALERTS_KEPT:
                self.alerts.append(alert)
            else:  # a run that alerts without end keeps its first alerts, and counts the rest
                self._summary.count("alerts_not_kept")
            if run.is_global_zero:
                if run.writers:
                    run.writers.write_alert(alert)
                if response != "raise":
                    warnings.warn(_with_action(alert, response), GradientWarning, stacklevel=2)
                self._write_report("running")
            if response == "stop":
                stop = True
            elif response == "raise":
                fail = True
        return skip, stop, fail

    def _write_step(
        self,
        run: _Run,
        step: int,
        stats: Any,
        opt_idx: int,
        suffix: str,
        detector: GradientDetector,
        clip: tuple[float, float] | None,
        with_scalars: bool,
    ) -> None:
        assert run.writers is not None
        if not with_scalars:
            run.writers.write_step(step, {}, histogram_tags(stats))
            return
        scalars = step_scalars(stats, suffix=suffix)
        scalars[f"gradwatch/total_norm_max{suffix}"] = run.interval_max.pop(opt_idx, stats.total_norm)
        threshold = detector.spike_threshold()
        if math.isfinite(threshold):
            scalars[f"gradwatch/spike_threshold{suffix}"] = threshold
        if clip is not None:
            clip_threshold, clipped_norm = clip
            scalars[f"gradwatch/clipped_norm{suffix}"] = clipped_norm
            if math.isfinite(clip_threshold):
                scalars[f"gradwatch/clip_threshold{suffix}"] = clip_threshold
        for event in ("amp_overflow_steps", "skipped_steps", "spike_steps", "clipped_steps"):
            scalars[f"gradwatch/{event}"] = float(self._summary.events.get(event, 0))
        run.writers.write_step(step, scalars, histogram_tags(stats))

    def _write_images(self, run: _Run, step: int, stats: Any, verdict: Verdict, suffix: str) -> None:
        """Hand this step's picture data to the drawing thread (matplotlib never runs on the training thread)."""
        if stats.mean_abs is None or stats.max_abs is None or run.drawing is None:
            return
        layers = stats.layers
        mean_abs, max_abs, health = stats.mean_abs, stats.max_abs, _layer_health(stats, verdict)
        grid = self._summary.norm_grid(layers)

        def draw() -> dict[str, bytes]:
            images = {f"gradwatch/gradient_flow{suffix}": gradient_flow_png(layers, mean_abs, max_abs, health, step)}
            rows, steps, norms = grid
            if len(steps) >= 2:
                images[f"gradwatch/gradient_heatmap{suffix}"] = gradient_heatmap_png(rows, steps, norms, step)
            return images

        run.drawing.submit(step, draw)

    def _write_drawn(self, run: _Run, drawn: list[tuple[int, dict[str, bytes]]]) -> None:
        """Write the pictures the drawing thread has finished; report its failure once."""
        assert run.writers is not None
        assert run.drawing is not None
        for step, images in drawn:
            run.writers.write_images(step, images)
        if run.drawing.error is not None and run.images:
            run.images = False
            err = run.drawing.error
            warnings.warn(
                f"GradWatch could not draw its gradient-flow images ({type(err).__name__}: {err}); it stops drawing"
                " them for this run.",
                GradientWarning,
                stacklevel=3,
            )

    def _collector(self, run: _Run, opt_idx: int, optimizer: Any, pl_module: Any) -> GradientStats:
        count = sum(len(g["params"]) for g in optimizer.param_groups)
        cached = run.collectors.get(opt_idx)
        if cached is not None and cached[0] == count:
            return cached[1]
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = [(_clean_name(n), p) for n, p in pl_module.named_parameters() if id(p) in in_optimizer]
        known = {id(p) for _, p in named}
        extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in known]
        named += [(f"optimizer_{opt_idx}.param_{i}", p) for i, p in enumerate(extra)]
        stats = GradientStats(
            named,
            granularity=self.granularity,
            include=self.include,
            exclude=self.exclude,
            histogram_bins=self.histogram_bins,
            histogram_sample_size=self.histogram_sample_size,
            max_layers=self.max_layers,
            plain_group=run.plain_group,
        )
        if stats.aggregated is not None and run.is_global_zero and cached is None:
            modules = len({layer_name(n, self.granularity) for n in stats.param_names})
            warnings.warn(
                f"GradWatch merges the {modules} layers of optimizer {opt_idx} into {len(stats.layer_names)},"
                f" {stats.aggregated} (max_layers={self.max_layers}), so TensorBoard stays readable. Pass a larger"
                " `max_layers`, or `include`/`exclude`, to see more.",
                GradientWarning,
                stacklevel=2,
            )
        run.collectors[opt_idx] = (count, stats)
        return stats

    def _detector(self, run: _Run, opt_idx: int) -> GradientDetector:
        det = self._detectors.get(opt_idx)
        if det is None:
            det = GradientDetector(self.detection, exempt_layers=run.exempt, traits=run.traits, optimizer=opt_idx)
            pending = self._pending_state.pop(str(opt_idx), None)
            if pending is not None:
                det.load_state_dict(pending)
            self._detectors[opt_idx] = det
        return det

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        run = self._run
        if run is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            run.loss = loss.detach()  # no sync here: it travels with the next step's statistics


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}")


_ACTIONS = {
    "stop": 'GradWatch stops training after this step (on_{kind}="stop"); this step\'s update is skipped.',
    "skip": 'GradWatch skips the updates of such steps (on_{kind}="skip").',
    "clip": 'GradWatch clips such steps to the spike threshold (on_{kind}="clip").',
}


def _with_action(alert: GradientAlert, response: str) -> str:
    action = _ACTIONS.get(response)
    return alert.message if action is None else f"{alert.message}\n{action.format(kind=alert.kind)}"


def _layer_health(stats: Any, verdict: Verdict) -> list[str]:
    """Per layer: ``non-finite``, ``exploding`` (a large share of a spike step's norm), ``vanishing`` or ``ok``."""
    vanishing = set(verdict.vanishing_layers)
    big = 0.1 * stats.total_norm**2 if verdict.spike else math.inf
    out = []
    for name, norm, bad in zip(stats.layers, stats.grad_norm, stats.nonfinite_count):
        if bad:
            out.append("non-finite")
        elif norm * norm >= big:
            out.append("exploding")
        elif name in vanishing:
            out.append("vanishing")
        else:
            out.append("ok")
    return out


def _health(verdict: Verdict, detector: GradientDetector) -> str:
    if verdict.nonfinite:
        return "non-finite"
    if verdict.spike and getattr(detector, "exploding_episode", False):
        return "exploding"
    if verdict.vanishing_layers:
        return "vanishing"
    return "ok"


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive, finite number, got {value!r}")


def _check_clip(clip: Any) -> None:
    if clip is None or clip == "adaptive":
        return
    if isinstance(clip, (str, bool)) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"`clip` must be None, a positive number (fixed max norm) or 'adaptive', got {clip!r}")


def _check_pattern(name: str, pattern: Any) -> None:
    import re

    if pattern is None:
        return
    if not isinstance(pattern, str):
        raise TypeError(f"`{name}` must be a regular expression string or None, got {type(pattern).__name__}")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"`{name}` is not a valid regular expression ({err}): {pattern!r}") from err


def _log_dir(trainer: Any) -> str | None:
    """Where ``gradwatch.json`` goes: the first TensorBoard logger's ``log_dir``, else ``trainer.log_dir``."""
    fallback = trainer.log_dir  # broadcasts: called on every rank
    for logger in trainer.loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            return os.fspath(logger.log_dir)
    return os.fspath(fallback) if fallback is not None else None


def _exempt_layers(pl_module: Any, granularity: str) -> frozenset[str]:
    """Normalisation layers and biases: their gradients are naturally small, never a vanishing signal."""
    exempt: set[str] = set()
    for name, module in pl_module.named_modules():
        if "Norm" in type(module).__name__:
            if granularity == "module":
                exempt.add(name)
            else:
                exempt.update(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
    if granularity == "parameter":
        exempt.update(n for n, _ in pl_module.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
    return frozenset(exempt)


_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def _clean_name(name: str) -> str:
    """A parameter name without the prefixes that wrappers (FSDP1, activation checkpointing, compile) add."""
    for prefix in _WRAPPER_PREFIXES[:3]:
        name = name.replace(prefix, "")
    return name


def _plain_shard_group(trainer: Any) -> Any:
    """The process group of plain-tensor gradient shards: the world under Lightning's FSDPStrategy (FSDP1).

    FSDP1 with ``use_orig_params=True`` leaves plain tensors holding each rank's slice; everything else needs no
    group (DTensors carry their own, and DDP gradients are whole).
    """
    strategy = trainer.strategy
    if not any(cls.__name__ == "FSDPStrategy" for cls in type(strategy).__mro__):
        return None
    import torch.distributed as dist

    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def _optimizer_index(trainer: Any, optimizer: Any) -> int:
    for i, opt in enumerate(getattr(trainer, "optimizers", ())):
        if opt is optimizer or getattr(opt, "optimizer", None) is optimizer:
            return i
    return 0


def _scaler_enabled(scaler: Any) -> bool:
    is_enabled = getattr(scaler, "is_enabled", None)
    return bool(is_enabled()) if callable(is_enabled) else True


def _drop_gradients(optimizer: Any) -> None:
    """Keep this step's update out: optimizers skip parameters whose gradient is ``None`` (state untouched)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def _reduce_decisions(trainer: Any, run: _Run, skip: bool, stop: bool, fail: bool) -> tuple[bool, bool, bool]:
    """Every rank takes the same decision: a flag raised on any rank holds on all of them."""
    if run.world_size <= 1:
        return skip, stop, fail
    device = getattr(trainer.strategy, "root_device", torch.device("cpu"))
    flags = torch.tensor([float(skip), float(stop), float(fail)], device=device)
    flags = trainer.strategy.reduce(flags, reduce_op="sum")
    values = flags.tolist()
    return values[0] > 0, values[1] > 0, values[2] > 0
