"""Regenerate the README's pictures: run the demo, serve it on 127.0.0.1, screenshot each TensorBoard view, and the
HTML report of the sigmoid run (``gradwatch report runs/demo/sigmoid --html ...``).

    python docs/screenshots.py [--out docs/images] [--steps 150] [--html-only]

Needs Debian's Chromium (``apt-get install chromium``). The TensorBoard server is started on a free port on
127.0.0.1 and stopped at the end; the demo's logs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_gradwatch.cli import main as gradwatch  # noqa: E402
from tests.tensorboard_server import TensorBoardServer  # noqa: E402
from tests.test_tensorboard_server import CHROMIUM, chromium  # noqa: E402

VIEWS = {
    "custom_scalars": "#custom_scalars",
    "histograms": "#histograms&tagFilter=grad_hist%2Fnet%5C.(0%7C10%7C20)%24",
    "histograms_log10": "#histograms&tagFilter=grad_hist_log10%2Fnet%5C.(0%7C10%7C20)%24",
    "distributions_log10": "#distributions&tagFilter=grad_hist_log10%2Fnet%5C.(0%7C10%7C20)%24",
    "images": "#images",
    "alerts": "#text",
    "scalars": "#scalars&tagFilter=gradwatch%2Ftotal_norm",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="where the PNG files go")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per demo run")
    parser.add_argument("--html-only", action="store_true", help="only the HTML report's picture")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("Chromium is not installed: apt-get install chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = str(Path(tmp) / "runs" / "demo")
        sys.argv = ["demo.py", "--out", logdir, "--steps", str(args.steps)]
        runpy.run_path(str(ROOT / "examples" / "demo.py"), run_name="__main__")
        html_report(Path(logdir), "sigmoid", out / "html_report.png")
        if args.html_only:
            return
        with TensorBoardServer(logdir) as tb:
            tb.wait_for("/data/plugin/scalars/tags", lambda tags: len(tags) >= 2)
            tb.wait_for("/data/plugin/images/tags", lambda tags: len(tags) >= 2)
            for name, fragment in VIEWS.items():
                target = out / f"{name}.png"
                result = chromium(
                    "--virtual-time-budget=20000",
                    "--window-size=1400,1000",
                    "--hide-scrollbars",
                    f"--screenshot={target}",
                    f"{tb.url}/?darkMode=false{fragment}",
                )
                if result.returncode != 0 or not target.exists():
                    sys.exit(f"screenshot of {name} failed: {result.stderr[-1000:]}")
                print(f"wrote {target}")


def html_report(logdir: Path, run: str, target: Path) -> None:
    """Screenshot the run's HTML report: verdict, heatmap, per-layer norms, total norm, the alert."""
    page = target.resolve().with_suffix(".html")
    here = os.getcwd()
    os.chdir(logdir.parents[1])  # the page names the run as the README's commands do: runs/demo/sigmoid
    try:
        gradwatch(["report", f"runs/demo/{run}", "--html", str(page)])
    finally:
        os.chdir(here)
    result = chromium(
        "--virtual-time-budget=5000",
        "--window-size=1200,1480",
        "--hide-scrollbars",
        f"--screenshot={target}",
        page.as_uri(),
    )
    page.unlink()
    if result.returncode != 0 or not target.exists():
        sys.exit(f"screenshot of the HTML report failed: {result.stderr[-1000:]}")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
