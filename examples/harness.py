"""The examples' training harness: train a demo model with GradWatch, their command line, and small helpers.

Shared by the examples, the tests and the benchmarks, which put the repository root on ``sys.path`` and import
``from examples.harness import ...``. The models themselves are in ``lightning_gradwatch.demos``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import TensorDataset

__all__ = ["accuracy", "example_arguments", "finite_weights", "log_after_fit", "single_thread", "train_demo"]


def train_demo(
    model: Any, watch: Any, out: str, name: str, steps: int, quiet: bool = True, **trainer_kwargs: Any
) -> Any:
    """Train a demo model on CPU with ``watch`` for ``steps`` optimizer steps, logging to TensorBoard in ``out/name``.

    Returns the Trainer. With ``quiet``, GradWatch's warnings are held back (print ``watch.alerts`` instead) and
    Lightning's banners are off.

    Example:
        >>> import tempfile
        >>> from lightning_gradwatch import GradWatch
        >>> from lightning_gradwatch.demos import DeepMLP
        >>> watch = GradWatch()
        >>> with tempfile.TemporaryDirectory() as out:
        ...     trainer = train_demo(DeepMLP(depth=3), watch, out, "relu", steps=5)
        >>> trainer.global_step
        5
    """
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.loggers import TensorBoardLogger
    except ImportError:  # pragma: no cover - the other flavour
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.loggers import TensorBoardLogger  # type: ignore[no-redef]

    torch.manual_seed(model.seed)
    kwargs: dict[str, Any] = {
        "max_steps": steps,
        "max_epochs": -1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": TensorBoardLogger(out, name=name, version=""),
        "callbacks": [watch],
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "log_every_n_steps": 5,
    }
    kwargs.update(trainer_kwargs)
    with warnings.catch_warnings():
        if quiet:
            from lightning_gradwatch import GradientWarning

            warnings.simplefilter("ignore", GradientWarning)
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")  # a deprecation inside Lightning, not ours
            logging.disable(logging.INFO)  # Lightning's banners
        try:
            trainer = pl.Trainer(**kwargs)
            trainer.fit(model)
        finally:
            if quiet:
                logging.disable(logging.NOTSET)
    return trainer


@torch.no_grad()
def accuracy(model: Any, data: TensorDataset | None = None) -> float:
    """Classification accuracy (``torchmetrics``) of a demo classifier in eval mode.

    Args:
        model: a demo classifier.
        data: ``(inputs, labels)``; default: the model's own training data.
    """
    from torchmetrics.classification import MulticlassAccuracy

    x, y = (model.dataset() if data is None else data).tensors
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return float(MulticlassAccuracy(num_classes=logits.shape[-1])(logits, y))


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def example_arguments(
    doc: str | None, argv: Sequence[str] | None, out: str, steps: int, quick_steps: int
) -> argparse.Namespace:
    """The examples' command line: ``--out``, ``--steps`` and ``--quick`` (``steps`` becomes ``quick_steps``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=out, help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per run")
    parser.add_argument("--quick", action="store_true", help=f"{quick_steps} steps per run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = quick_steps
    return args


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread inside the block: for models this small, more threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def log_after_fit(trainer: Any, metrics: dict[str, float]) -> None:
    """Write ``metrics`` into the run's logs at its last step (after ``fit`` has closed them)."""
    trainer.logger.log_metrics(metrics, step=trainer.global_step)
    trainer.logger.finalize("success")
