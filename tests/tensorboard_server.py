"""A real TensorBoard server on 127.0.0.1 for tests and the screenshot script: started, polled, stopped by pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


class TensorBoardServer:
    """``tensorboard --logdir LOGDIR --host 127.0.0.1 --port 0``; use as a context manager.

    Args:
        logdir: the directory to serve.
        timeout: seconds to wait for the server to print its address.
    """

    def __init__(self, logdir: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.logdir = os.fspath(logdir)
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.url = ""
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115

    def __enter__(self) -> TensorBoardServer:
        exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or "tensorboard"
        self.process = subprocess.Popen(
            [exe, "--logdir", self.logdir, "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = Path(self._log.name).read_text(errors="replace")
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", text)
            if match:
                self.url = match.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.process.returncode}:\n{text[-2000:]}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tensorboard did not start within {self.timeout} s")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return response.read()

    def json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def wait_for(self, path: str, ready: Any, timeout: float = 60.0) -> Any:
        """Poll ``path`` until ``ready(json)`` is true (TensorBoard loads event files in the background)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.json(path)
            if ready(last):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"{path} never became ready; last answer: {str(last)[:500]}")
