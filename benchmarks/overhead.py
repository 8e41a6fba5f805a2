"""What GradWatch costs per optimizer step, next to Lightning's own ``grad_norm``, measured side by side in one run.

    python benchmarks/overhead.py                    # full run, a few minutes
    python benchmarks/overhead.py --quick            # smoke run, well under a minute
    python benchmarks/overhead.py --models many --steps 200 --repeats 6 --threads 1

Variants, each a real ``lightning.pytorch.Trainer`` writing TensorBoard event files to a temporary directory (the
cost of writing is part of what is measured); the models log nothing themselves:

- ``bare``: no callback.
- ``GradWatch() defaults``: the schedule ``GradWatch()`` has on a run of 5000 steps or more: scalars every 50 steps
  (the Trainer's ``log_every_n_steps``), histograms every 200 (a timed fit is too short to get it by itself: its
  schedule follows the run length);
  the gradient-flow pictures off here (``images=False``): they are drawn on a worker thread that would run on during
  the other variants' turns and slow *them*. Their cost is timed on its own in the hook table.
- ``GradWatch every step``: ``GradWatch(log_every_n_steps=1, histogram_every_n_steps=0)``.
- ``GradWatch(log_every_n_steps=1), histograms and pictures``: every step with the default histograms and pictures,
  spaced out by the default overhead budget (their drawing thread may run on during other variants' turns).
- ``Lightning grad_norm every step``: ``self.log_dict(grad_norm(self, norm_type=2))`` in the module's
  ``on_before_optimizer_step``, with ``Trainer(log_every_n_steps=1)`` so it is written every step too.

Step time is the wall time between consecutive ``on_train_batch_start`` hooks: one whole loop iteration (batch
fetch, forward, backward, ``on_before_optimizer_step`` hooks, optimizer step, batch-end hooks, and the logger
connector's write of the step's metrics). Lightning writes ``self.log`` metrics *after* ``on_train_batch_end``, so
timing ``on_train_batch_start`` -> ``on_train_batch_end`` would leave ``grad_norm``'s writing out. One batch is one
optimizer step; the first ``--warmup`` steps of every fit are discarded.

The variants run in lockstep: one Trainer per variant, each in its own thread, taking turns one step at a time (a
baton passes on at every ``on_train_batch_start``, so exactly one step runs at any moment, and setup and teardown
never overlap a timed step). Machine noise thus hits all variants alike at the scale of single steps, which matters
on a shared machine where sequential runs drift by tens of percent. ``--repeats`` rounds, each a fresh set of
Trainers with the turn order rotated; medians pool the steps of all rounds, the ``round range`` column shows the
spread of the per-round ratios. One caveat of lockstep: each step starts with caches holding the previous variant's
data, alike for all variants.

Then GradWatch's own hook, timed by kind of step (plain, scalar log, histogram with and without the gradient-flow
images) in a short fit, and its cost per step averaged over the default schedule: medians leave out the rare log
and histogram steps, this does not.

Last, the statistics alone, on each model's real gradients after one backward pass: ``GradientStats.collect()`` (the
per-step path), ``collect(weights=True)`` (the per-step path of ``clip="adaptive"`` under SGD, whose step-size cap
reads the weights' norm), ``collect(extended=True)`` (log steps) and ``collect(extended=True, histograms=True)``
(histogram steps), each against a bare ``torch._foreach_norm(grads, 2)`` + one ``torch.stack(...).cpu()``, interleaved.

Targets are printed with PASS/MISS and never asserted: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_gradwatch import GradWatch
from lightning_gradwatch.stats import GradientStats

EVERY_STEP_ALL = "GradWatch(log_every_n_steps=1), histograms and pictures"
STEP_TARGETS = {"GradWatch() defaults": 1.02, "GradWatch every step": 1.05, EVERY_STEP_ALL: 1.05}  # vs bare
SHARE_TARGET = 0.5  # max GradWatch overhead as a fraction of grad_norm's overhead
STATS_TARGET = 1.5  # max collect() time vs a bare _foreach_norm
GRAD_NORM = "Lightning grad_norm every step"
# Doing more work cannot make a step faster. On the 1000-tensor model, lockstep has shown "bare" steps slower than
# GradWatch's by 20-35% in every round (not so when timed alone): a PASS there would mean nothing.
ARTIFACT_BELOW = 0.97


# ---------------------------------------------------------------------------------------------------- models
class BenchModule(pl.LightningModule):
    """Base of the benchmark models: AdamW, a fixed in-memory dataset, optional Lightning ``grad_norm`` logging."""

    batch_size = 1

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.log_grad_norm = False

    def make_data(self, generator: torch.Generator) -> TensorDataset:
        raise NotImplementedError

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.log_grad_norm:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.make_data(torch.Generator().manual_seed(0)), batch_size=self.batch_size)


class TransformerLM(BenchModule):
    """Decoder-only transformer LM: 6 pre-norm layers, d_model 128, 4 heads, ffn 768, vocab 1024 (1.86M params)."""

    batch_size = 4

    def __init__(self, batches: int, vocab: int = 1024, d_model: int = 128, seq_len: int = 64) -> None:
        super().__init__(batches)
        self.vocab, self.seq_len = vocab, seq_len
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, 4, 6 * d_model, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def make_data(self, generator: torch.Generator) -> TensorDataset:
        tokens = torch.randint(self.vocab, (self.batches * self.batch_size, self.seq_len + 1), generator=generator)
        return TensorDataset(tokens[:, :-1], tokens[:, 1:])

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        tokens, targets = batch
        h = self.blocks(self.embed(tokens) + self.pos, mask=self.mask, is_causal=True)
        logits = self.head(self.norm(h))
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))


class ManyTensors(BenchModule):
    """Residual stack of 500 ``Linear(32, 32)`` in 50 blocks of 10: exactly 1000 parameter tensors."""

    batch_size = 32

    def __init__(self, batches: int, blocks: int = 50, depth: int = 10, width: int = 32) -> None:
        super().__init__(batches)
        self.width = width
        self.blocks = nn.ModuleList(
            nn.Sequential(*(nn.Linear(width, width) for _ in range(depth))) for _ in range(blocks)
        )

    def make_data(self, generator: torch.Generator) -> TensorDataset:
        n = self.batches * self.batch_size
        return TensorDataset(torch.randn(n, self.width, generator=generator), torch.randn(n, self.width))

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        for block in self.blocks:
            for layer in block:
                x = x + 0.1 * torch.relu(layer(x))
        return nn.functional.mse_loss(x, y)


MODELS: dict[str, Callable[[int], BenchModule]] = {"transformer": TransformerLM, "many": ManyTensors}


# ---------------------------------------------------------------------------------------------------- step timing
@dataclass(frozen=True)
class Variant:
    """One configuration to time: its callbacks, the Trainer's ``log_every_n_steps``, and ``grad_norm`` logging."""

    name: str
    callbacks: Callable[[], list[pl.Callback]]
    trainer_log_every: int = 50
    log_grad_norm: bool = False


VARIANTS = (
    Variant("bare", list),
    # pictures off in lockstep: their drawing thread would run on during the other variants' turns and be charged
    # to them (it made "bare" look slower); the hook table below times their hand-over and the drawing itself
    # a timed fit is a few dozen steps, which GradWatch() would chart at every step (its schedule follows the run
    # length); a run of 5000 steps or more gets scalars every 50 steps and histograms every 200, set here
    Variant("GradWatch() defaults", lambda: [GradWatch(log_every_n_steps=50, images=False)]),
    Variant("GradWatch every step", lambda: [GradWatch(log_every_n_steps=1, histogram_every_n_steps=0)]),
    # what users reach for first: every step, with the default histograms and pictures, under the overhead budget
    Variant(EVERY_STEP_ALL, lambda: [GradWatch(log_every_n_steps=1)]),
    Variant(GRAD_NORM, list, trainer_log_every=1, log_grad_norm=True),
)


class Baton:
    """Lets several threads run one at a time, in turn: the holder works, then passes the baton on and waits.

    Nobody starts before every thread has arrived; a thread that leaves (finished or failed) drops out of the turn.
    """

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self._n = n
        self._turn = 0
        self._arrived: set[int] = set()
        self._left: set[int] = set()

    def arrive(self, i: int) -> None:
        """Register thread ``i`` and wait until all have arrived and it is ``i``'s turn."""
        with self._cond:
            self._arrived.add(i)
            self._cond.notify_all()
            self._cond.wait_for(lambda: len(self._arrived | self._left) == self._n and self._turn == i)

    def pass_on(self, i: int) -> None:
        """Hand the baton to the next thread still running, then wait for ``i``'s next turn."""
        with self._cond:
            self._advance()
            self._cond.wait_for(lambda: self._turn == i)

    def leave(self, i: int) -> None:
        """Drop thread ``i`` out of the turn (handing the baton on if it holds it)."""
        with self._cond:
            self._left.add(i)
            if self._turn == i:
                self._advance()
            self._cond.notify_all()

    def _advance(self) -> None:
        for k in range(1, self._n + 1):
            if (self._turn + k) % self._n not in self._left:
                self._turn = (self._turn + k) % self._n
                break
        self._cond.notify_all()


class StepTimer(pl.Callback):
    """Step time = wall time between consecutive ``on_train_batch_start`` hooks; the baton moves on in between.

    Before the baton moves on, the TensorBoard writer's background thread is drained (``SummaryWriter.flush()``): it
    checksums every record in pure Python, and that work must not spill into the next variant's step. The wait
    counts as part of the step (``drains`` keeps it apart).
    """

    def __init__(self, baton: Baton, index: int) -> None:
        self.baton, self.index = baton, index
        self.times: list[float] = []
        self.drains: list[float] = []
        self._start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.baton.arrive(self.index)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._start is not None:
            worked = time.perf_counter()
            for logger in trainer.loggers:
                logger.experiment.flush()
            end = time.perf_counter()
            self.times.append(end - self._start)
            self.drains.append(end - worked)
            self.baton.pass_on(self.index)
        self._start = time.perf_counter()


def new_trainer(root: str, callbacks: list[pl.Callback], max_steps: int, log_every_n_steps: int = 50) -> pl.Trainer:
    """A CPU Trainer logging to TensorBoard under ``root``; no progress bar, checkpoints or model summary."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=TensorBoardLogger(root, name="bench", default_hp_metric=False),
        callbacks=callbacks,
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def time_round(
    make: Callable[[int], BenchModule], variants: Sequence[Variant], steps: int, warmup: int
) -> list[tuple[list[float], list[float]]]:
    """Fit one model per variant, all at once in lockstep (one step each in turn); per fit, the seconds of each timed
    step and of the writer drain it includes."""
    total = warmup + steps + 1  # the last batch only marks the end of the step before it
    baton = Baton(len(variants))
    timers = [StepTimer(baton, i) for i in range(len(variants))]
    errors: list[BaseException] = []
    with ExitStack() as stack:
        jobs = []
        for variant, timer in zip(variants, timers):
            torch.manual_seed(0)
            model = make(total)
            model.log_grad_norm = variant.log_grad_norm
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="gradwatch-bench-"))
            trainer = new_trainer(root, [timer, *variant.callbacks()], total, variant.trainer_log_every)
            jobs.append((trainer, model, timer.index))

        def fit(trainer: pl.Trainer, model: BenchModule, index: int) -> None:
            try:
                trainer.fit(model)
            except BaseException as err:  # re-raised in the main thread
                errors.append(err)
            finally:
                baton.leave(index)

        threads = [threading.Thread(target=fit, args=job, daemon=True) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        del jobs, threads
    gc.collect()
    if errors:
        raise errors[0]
    return [(timer.times[warmup:], timer.drains[warmup:]) for timer in timers]


@dataclass
class StepResult:
    """Pooled step times of one variant on one model, with the per-round ratios to ``bare``."""

    model: str
    variant: str
    median_ms: float
    mean_ms: float
    drain_ms: float
    ratio: float
    round_ratios: list[float]


def bench_steps(model_name: str, steps: int, warmup: int, repeats: int) -> list[StepResult]:
    """Every variant on one model: ``repeats`` lockstep rounds, the turn order rotated each round."""
    make = MODELS[model_name]
    rounds: dict[str, list[list[float]]] = {v.name: [] for v in VARIANTS}
    drains: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant, (times, drained) in zip(order, time_round(make, order, steps, warmup)):
            rounds[variant.name].append(times)
            drains[variant.name] += drained
        bare = statistics.median(rounds["bare"][-1])
        line = ", ".join(f"{v.name} {statistics.median(rounds[v.name][-1]) / bare:.3f}x" for v in VARIANTS[1:])
        print(f"  {model_name} round {r + 1}/{repeats}: bare {1e3 * bare:.1f} ms; {line}", flush=True)
    bare_all = statistics.median(t for times in rounds["bare"] for t in times)
    results = []
    for v in VARIANTS:
        pooled = [t for times in rounds[v.name] for t in times]
        per_round = [statistics.median(a) / statistics.median(b) for a, b in zip(rounds[v.name], rounds["bare"])]
        median = statistics.median(pooled)
        results.append(
            StepResult(
                model=model_name,
                variant=v.name,
                median_ms=1e3 * median,
                mean_ms=1e3 * statistics.fmean(pooled),
                drain_ms=1e3 * statistics.median(drains[v.name]),
                ratio=median / bare_all,
                round_ratios=per_round,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------------- hook by step kind
class TimedGradWatch(GradWatch):
    """``GradWatch`` that records, per global step, the wall time of its ``on_before_optimizer_step`` hook plus the
    TensorBoard writer's drain of what it wrote (``drains`` keeps the drain apart)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_times: dict[int, float] = {}
        self.drains: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        worked = time.perf_counter()
        for logger in trainer.loggers:
            logger.experiment.flush()
        end = time.perf_counter()
        self.hook_times[trainer.global_step] = end - start
        self.drains[trainer.global_step] = end - worked


HOOK_LOG_EVERY, HOOK_HIST_EVERY = 2, 4  # so one short fit has every kind of step
HOOK_KINDS = ("plain step", "scalar log step", "histogram step, images=False", "histogram step, images=True")
DRAWING = "pictures drawn on the worker thread, CPU time"


def bench_drawing(model_name: str, repeats: int = 3) -> float:
    """Median CPU seconds matplotlib takes for one step's two pictures (bar chart and a 20-column heatmap) of the
    model's layers: work done on GradWatch's drawing thread, off the training thread."""
    from lightning_gradwatch.pictures import gradient_flow_png, gradient_heatmap_png

    layers = GradientStats(MODELS[model_name](1).named_parameters(), max_layers=GradWatch().max_layers).layer_names
    g = torch.Generator().manual_seed(0)
    values = (10 ** torch.empty(len(layers), 21).uniform_(-6, 0, generator=g)).tolist()
    times = []
    for _ in range(repeats + 1):  # the first also loads fonts
        start = time.thread_time()  # CPU time, as on the drawing thread
        gradient_flow_png(layers, [v[0] for v in values], [v[1] for v in values], ["ok"] * len(layers), 4000)
        gradient_heatmap_png(layers, list(range(0, 4000, 200)), [v[1:] for v in values], 4000)
        times.append(time.thread_time() - start)
    return statistics.median(times[1:])


def bench_hook(model_name: str, histogram_steps: int) -> dict[str, tuple[float, float]]:
    """Per kind of step (plain, scalar log, histogram with and without images): median seconds of GradWatch's hook
    with its writer drain, and of the drain alone."""
    out: dict[str, list[tuple[float, float]]] = {kind: [] for kind in HOOK_KINDS}
    for images in (False, True):
        torch.manual_seed(0)
        total = HOOK_HIST_EVERY * histogram_steps + 1
        watch = TimedGradWatch(log_every_n_steps=HOOK_LOG_EVERY, histogram_every_n_steps=HOOK_HIST_EVERY, images=images)
        with tempfile.TemporaryDirectory(prefix="gradwatch-bench-") as root:
            new_trainer(root, [watch], total).fit(MODELS[model_name](total))
        for step, seconds in watch.hook_times.items():
            if step == 0:  # first call: plans, generators, font cache
                continue
            if step % HOOK_HIST_EVERY == 0:
                kind = HOOK_KINDS[3 if images else 2]
            elif images:
                continue
            else:
                kind = HOOK_KINDS[1 if step % HOOK_LOG_EVERY == 0 else 0]
            out[kind].append((seconds, watch.drains[step]))
    return {
        kind: (statistics.median(t for t, _ in pairs), statistics.median(d for _, d in pairs))
        for kind, pairs in out.items()
    }


def amortized_defaults(hook: dict[str, tuple[float, float]], log_every: int = 50, hist_every: int = 200) -> float:
    """Seconds per step of ``GradWatch()`` averaged over its schedule (every histogram step is a log step too)."""
    plain, scalars, hist = (hook[kind][0] for kind in (HOOK_KINDS[0], HOOK_KINDS[1], HOOK_KINDS[3]))
    return plain + (scalars - plain) / log_every + (hist - scalars) / hist_every


# ---------------------------------------------------------------------------------------------------- statistics alone
STATS_CALLS = (
    "collect()",
    "collect(weights=True)",
    "collect(extended=True)",
    "collect(extended=True, histograms=True)",
)


def bench_stats(model_name: str, repeats: int) -> dict[str, float]:
    """Median seconds of each statistics call and of the bare ``_foreach_norm``, interleaved, on real gradients."""
    torch.manual_seed(0)
    model = MODELS[model_name](1)
    batch = next(iter(model.train_dataloader()))
    model.training_step(batch, 0).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    stats = GradientStats(model.named_parameters())

    def bare() -> None:
        torch.stack(torch._foreach_norm(grads, 2)).cpu()

    calls: dict[str, Callable[[], Any]] = {
        "bare": bare,
        STATS_CALLS[0]: stats.collect,
        STATS_CALLS[1]: lambda: stats.collect(weights=True),
        STATS_CALLS[2]: lambda: stats.collect(extended=True),
        STATS_CALLS[3]: lambda: stats.collect(extended=True, histograms=True),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for name in names:  # warm-up: plans, generators, allocator
        for _ in range(3):
            calls[name]()
    with torch.no_grad():
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------------- reporting
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_model(model_name: str) -> str:
    model = MODELS[model_name](1)
    n_params = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    layers = len(GradientStats(model.named_parameters(), max_layers=GradWatch().max_layers).layer_names)
    return f"{model_name}: {n_params / 1e6:.2f}M parameters in {tensors} tensors, {layers} GradWatch layers"


def step_table(results: list[StepResult]) -> list[str]:
    """Markdown rows of the step-time table, with each target's verdict."""
    rows = [
        "| model | variant | median step (ms) | vs bare | round range | mean step (ms) | writer drain (ms) "
        "| overhead vs grad_norm's | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_key = {(r.model, r.variant): r for r in results}
    for r in results:
        bare = by_key[(r.model, "bare")]
        gn = by_key[(r.model, GRAD_NORM)]
        share, target = "", ""
        if r.variant.startswith("GradWatch") and r.ratio < ARTIFACT_BELOW:
            target = "not measured: faster than bare, a lockstep artifact; see the hook table"
        elif r.variant.startswith("GradWatch"):
            gn_overhead = gn.median_ms - bare.median_ms
            if gn_overhead > 0:
                fraction = (r.median_ms - bare.median_ms) / gn_overhead
                share = f"{fraction:.1%}"
                target = f"share <= {SHARE_TARGET:.0%}: {verdict(fraction <= SHARE_TARGET)}"
            limit = STEP_TARGETS[r.variant]
            target = f"<= {limit:.2f}x: {verdict(r.ratio <= limit)}" + (f"; {target}" if target else "")
        spread = f"{min(r.round_ratios):.3f}-{max(r.round_ratios):.3f}x" if r.variant != "bare" else ""
        rows.append(
            f"| {r.model} | {r.variant} | {r.median_ms:.2f} | {r.ratio:.3f}x | {spread} | {r.mean_ms:.2f} "
            f"| {r.drain_ms:.2f} | {share} | {target} |"
        )
    return rows


def stats_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows of the statistics-alone table (milliseconds, and ratios to the bare ``_foreach_norm``)."""
    head = "| model | bare _foreach_norm (ms) | " + " | ".join(f"{c} (ms)" for c in STATS_CALLS) + " | target |"
    rows = [head, "|---|---:|" + "---:|" * len(STATS_CALLS) + "---|"]
    for model_name, t in results.items():
        bare = t["bare"]
        cells = " | ".join(f"{1e3 * t[c]:.3f} ({t[c] / bare:.2f}x)" for c in STATS_CALLS)
        ok = t[STATS_CALLS[0]] / bare <= STATS_TARGET
        rows.append(f"| {model_name} | {1e3 * bare:.3f} | {cells} | collect() <= {STATS_TARGET}x: {verdict(ok)} |")
    return rows


def hook_table(
    hooks: dict[str, dict[str, tuple[float, float]]], bare_ms: dict[str, float], drawing: dict[str, float]
) -> list[str]:
    """Markdown rows of the hook-time table, with the amortized cost of ``GradWatch()``'s schedule."""
    rows = [
        "| model | "
        + " | ".join(f"{kind} (ms)" for kind in HOOK_KINDS)
        + f" | GradWatch() amortized (ms/step) | {DRAWING} (ms) |",
        "|---|" + "---:|" * (len(HOOK_KINDS) + 2),
    ]
    for model_name, hook in hooks.items():
        per_step = 1e3 * amortized_defaults(hook)
        share = f" ({per_step / bare_ms[model_name]:.1%} of bare step)" if model_name in bare_ms else ""
        cells = " | ".join(f"{1e3 * hook[kind][0]:.2f} ({1e3 * hook[kind][1]:.2f})" for kind in HOOK_KINDS)
        rows.append(f"| {model_name} | {cells} | {per_step:.2f}{share} | {1e3 * drawing[model_name]:.0f} |")
    return rows


def quiet() -> None:
    """Keep Lightning's banners and the warnings of short runs (few workers, merged layers) off the output."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run, well under a minute")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per fit (default 30; --quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds over all variants (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="steps discarded per fit (default 5; --quick 1)")
    parser.add_argument("--models", default="transformer,many", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--stats-repeats", type=int, default=None, help="calls per statistic (default 200; --quick 5)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    steps = args.steps or (2 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    stats_repeats = args.stats_repeats or (5 if args.quick else 200)
    quiet()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = (
        f"torch {torch.__version__}, lightning {lightning.__version__}, python {platform.python_version()}; "
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}"
    )
    print(env)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (timings on a shared machine are noisy)")
    print(f"{steps} timed steps per fit after {warmup} discarded, {repeats} lockstep rounds")
    for m in models:
        print(describe_model(m))
    print(flush=True)

    step_results: list[StepResult] = []
    for m in models:
        step_results += bench_steps(m, steps, warmup, repeats)
    hooks = {m: bench_hook(m, 1 if args.quick else 3) for m in models}
    stats_results = {m: bench_stats(m, stats_repeats) for m in models}
    drawing = {m: bench_drawing(m, 1 if args.quick else 3) for m in models}

    print(f"\n## Step time ({steps} steps x {repeats} rounds per variant)\n")
    print("\n".join(step_table(step_results)))
    bare_ms = {r.model: r.median_ms for r in step_results if r.variant == "bare"}
    print(
        f"\n## GradWatch hook time by kind of step, with (in brackets) the TensorBoard writer drain it includes"
        f" (median; GradWatch(log_every_n_steps={HOOK_LOG_EVERY}, histogram_every_n_steps={HOOK_HIST_EVERY}));"
        " amortized over the default 50/200 schedule. The pictures are drawn on a worker thread: the hook only hands"
        " their data over; the last column is the drawing's own time, off the training thread\n"
    )
    print("\n".join(hook_table(hooks, bare_ms, drawing)))
    print(f"\n## Statistics alone (median of {stats_repeats} calls on one backward pass's gradients)\n")
    print("\n".join(stats_table(stats_results)))
    print(f"\n{env}; load average at end: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
