"""Headless Chromium driven through the DevTools protocol over a pipe (a test helper, not a test).

    with HeadlessChromium() as browser:
        browser.open("http://127.0.0.1:5000/#/experiments/1/runs")
        text = browser.wait_for_text(["run a", "run b"], timeout_s=60)  # the page's rendered text
        browser.screenshot(path)

Debian's ``chromium`` package (.ci/run installs it); no driver and no Python package beyond the standard library:
Chromium reads protocol commands from file descriptor 3 and writes its answers to 4 (``--remote-debugging-pipe``),
one JSON message each, ended by a NUL byte. Nothing listens on a port, and the flags below keep the browser from
calling anywhere but the pages it is asked to open.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The chromium package's binary (the /usr/bin/chromium wrapper script only adds flags from /etc/chromium.d).
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def chromium_binary() -> str | None:
    """The Chromium executable, None when it is not installed."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    return None


class HeadlessChromium:
    """One headless Chromium with a fresh profile and one page."""

    def __init__(self, *, width: int = 1600, height: int = 900) -> None:
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        commands_read, commands_write = os.pipe()
        answers_read, answers_write = os.pipe()

        def use_pipes() -> None:  # in the child: the protocol's descriptors 3 and 4
            high_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(answers_write, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        args = [binary, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        self._process = subprocess.Popen(
            args,
            preexec_fn=use_pipes,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._commands = os.fdopen(commands_write, "wb", buffering=0)
        self._answers = os.fdopen(answers_read, "rb", buffering=0)
        self._buffer = b""
        self._last_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def open(self, url: str) -> None:
        self._call("Page.navigate", {"url": url}, session=True)

    def text(self) -> str:
        """The page's rendered text (``document.body.innerText``)."""
        found = self._call(
            "Runtime.evaluate",
            {"expression": "document.body ? document.body.innerText : ''", "returnByValue": True},
            session=True,
        )
        return str(found["result"].get("value", ""))

    def wait_for_text(self, expected: Sequence[str], *, timeout_s: float) -> str:
        """Poll the page until its text holds every string of ``expected``; returns the text.

        Raises:
            TimeoutError: with the strings still missing and the end of the page's text.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            missing = [item for item in expected if item not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout_s:.0f} s the page still lacks {missing}; it shows:\n{text[-2000:]}")
            time.sleep(0.5)

    def click_text(self, label: str) -> bool:
        """Click the first button whose text or aria-label is ``label``; False when there is none."""
        wanted = json.dumps(label)
        script = f"""(() => {{
            const match = [...document.querySelectorAll('button')].find(
                b => b.innerText.trim() === {wanted} || b.getAttribute('aria-label') === {wanted});
            if (match) {{ match.click(); return true; }}
            return false; }})()"""
        found = self._call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=True)
        return bool(found["result"].get("value"))

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        data = self._call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._commands.close()
        self._answers.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, params: dict[str, Any], *, session: bool = False) -> dict[str, Any]:
        """Send one command and return its result (events that arrive in between are skipped)."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._commands.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._answers.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self._process.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._last_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
