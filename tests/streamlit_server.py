"""A real Streamlit server and a real browser for the browser tests and the app's benchmark: `affectvlm app` (or
`streamlit run` of a page) on a free port of 127.0.0.1, in its own process group so that stopping it stops its
children too, and headless Chromium (Debian's package) driven by Playwright."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDRESS = "127.0.0.1"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, which Playwright drives
CHECKOUT_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # subprocesses import this checkout's package

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


def launch_chromium(playwright):
    """Headless Chromium, from Playwright's sync API."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        return probe.getsockname()[1]


class StreamlitServer:
    """Started on construction; `wait_until_healthy` before the first page, `stop` (or leave the `with` block)
    after the last. The server's output goes to `log`, which failures quote."""

    def __init__(self, arguments: list[str], port: int, log: Path):
        self.url = f"http://{ADDRESS}:{port}"
        self.log = log
        with open(log, "w") as output:
            self.process = subprocess.Popen([sys.executable, "-m", *arguments], cwd=ROOT, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env=CHECKOUT_ENV)

    @classmethod
    def app(cls, log: Path, checkpoint: Path | None = None) -> "StreamlitServer":
        """`affectvlm app`, with the shipped demo model unless a checkpoint is given."""
        port = free_port()
        chosen = ["--checkpoint", str(checkpoint)] if checkpoint else []
        return cls(["affectvlm", "app", *chosen, "--port", str(port), "--address", ADDRESS], port, log)

    @classmethod
    def page(cls, script: Path, log: Path) -> "StreamlitServer":
        """`streamlit run SCRIPT`."""
        port = free_port()
        return cls(["streamlit", "run", str(script), "--server.port", str(port), "--server.address", ADDRESS,
                    "--server.headless", "true", "--browser.gatherUsageStats", "false"], port, log)

    def wait_until_healthy(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()}"
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.url} did not answer in {seconds} s: {self.log.read_text()}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)

    def __enter__(self) -> "StreamlitServer":
        return self

    def __exit__(self, *exception) -> None:
        self.stop()
