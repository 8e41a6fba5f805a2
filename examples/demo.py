"""GradWatch in one minute: a healthy deep net and a vanishing one, side by side in TensorBoard.

Runs ``deep_sigmoid_vs_relu.py`` (an 11-layer sigmoid MLP, whose first layers' gradients vanish, against the same
net with ReLU + BatchNorm) into ``runs/demo``. Each run writes TensorBoard logs and a ``gradwatch.json`` report; the
alerts and the accuracies are printed at the end.

    python examples/demo.py [--out runs/demo] [--steps 300]
    tensorboard --logdir runs/demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deep_sigmoid_vs_relu


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the demo; returns what ``deep_sigmoid_vs_relu.main`` returns."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    args = parser.parse_args(argv)
    return deep_sigmoid_vs_relu.main(["--out", args.out, "--steps", str(args.steps)])


if __name__ == "__main__":
    main()
