"""The report pages in a real browser: headless Chromium, driven over the DevTools protocol on a pipe (no driver, no
download). One bundle per target (the report tests' sample manifests) and their comparison page (`edgemtl report`):
every image loads, nothing is wider than a 1280-px window, no console error. A screenshot of each page goes to
build/browser/ (CI keeps it as an artifact)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgemtl.cli import main
from edgemtl.report import write_report

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "build" / "browser"
WIDTH, HEIGHT = 1280, 900
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)

pytestmark = [pytest.mark.needs_chromium,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (edgemtl toolchain install chromium)")]

# Every <img> with its load state, the page's width, and the elements that stick out past the window's right edge.
PROBE = f"""JSON.stringify({{
  images: [...document.images].map(i => ({{src: i.src.slice(0, 40), alt: i.alt, complete: i.complete,
                                           width: i.naturalWidth}})),
  scrollWidth: document.documentElement.scrollWidth,
  wide: [...document.body.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > {WIDTH} + 0.5)
          .filter(e => !e.parentElement || e.parentElement.getBoundingClientRect().right <= {WIDTH} + 0.5)
          .slice(0, 5).map(e => e.tagName + (e.className ? '.' + e.className : '')
                                + ' ' + Math.round(e.getBoundingClientRect().right) + 'px'),
}})"""


class Chromium:
    """Headless Chromium speaking the DevTools protocol on fds 3 / 4 (--remote-debugging-pipe): NUL-separated JSON."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()
        # the child's fds 3 and 4; the copies sit above 10 so the dup2s below cannot overwrite one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]

        def wire() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}"],
            pass_fds=(3, 4), preexec_fn=wire, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        for fd in (to_child, from_child, *high):
            os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _message(self, timeout: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], timeout)
            chunk = os.read(self._from_browser, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError(f"chromium sent nothing for {timeout:g} s" if not ready else "chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        while True:
            message = self._message(timeout)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._message(timeout))

    def open_tab(self) -> str:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        return session

    def check_page(self, session: str, page: Path, screenshot: Path) -> dict[str, Any]:
        """Load the page, probe it, save a full-page screenshot; the probe's result plus the page's errors."""
        self.events.clear()
        self.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired")
        probe = json.loads(self.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True},
                                     session=session)["result"]["value"])
        height = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": WIDTH, "height": min(height, 16000), "scale": 1}}, session=session, timeout=60)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        probe["errors"] = [_error_text(event) for event in self.events if _is_error(event)]
        return probe

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _is_error(event: dict[str, Any]) -> bool:
    method, params = event.get("method"), event.get("params", {})
    return (method == "Runtime.exceptionThrown"
            or (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"))
            or (method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error"))


def _error_text(event: dict[str, Any]) -> str:
    params = event["params"]
    if "exceptionDetails" in params:
        details = params["exceptionDetails"]
        return details.get("exception", {}).get("description") or details.get("text", "exception")
    if "entry" in params:
        return f"{params['entry'].get('source')}: {params['entry'].get('text')} {params['entry'].get('url', '')}"
    return " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium, chromium.open_tab()
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """report.html of one bundle per target (the report tests' sample manifests) and their comparison.html."""
    from report.test_compare import _arm64, _write
    from report.test_fpga_report import _manifest as zcu104
    from report.test_mcu_report import _manifest as gap9
    from report.test_report import _manifest as host

    root = tmp_path_factory.mktemp("bundles")
    bundles = {"host": _write(root / "host", host(), {"tasks/depth/model.onnx": 2000}),
               "zcu104": _write(root / "zcu104", zcu104()), "gap9": _write(root / "gap9", gap9()),
               "arm64": _write(root / "arm64", _arm64(), {"tasks/scene/model.onnx": 1000,
                                                           "tasks/scene/model.int8.onnx": 400})}
    found = {}
    for name, folder in bundles.items():
        write_report(json.loads((folder / "manifest.json").read_text()), folder)
        found[f"{name}-report"] = folder / "report.html"
    with pytest.raises(SystemExit) as done:
        main(["report", *map(str, bundles.values()), "--no-layers", "-o", str(root / "comparison")])
    assert (done.value.code or 0) == 0
    found["comparison"] = root / "comparison" / "comparison.html"
    return found


@pytest.mark.parametrize("page", ["host-report", "zcu104-report", "gap9-report", "arm64-report", "comparison"])
def test_a_report_page_renders_whole_in_a_1280px_window(browser, pages, page):
    chromium, session = browser
    result = chromium.check_page(session, pages[page], SHOTS / f"{page}.png")
    html = pages[page].read_text()
    assert len(result["images"]) == html.count("<img"), result["images"]
    assert all(image["complete"] and image["width"] > 0 for image in result["images"]), result["images"]
    assert result["scrollWidth"] <= WIDTH, f"{result['scrollWidth']} px wide; sticking out: {result['wide']}"
    assert not result["errors"], result["errors"]
    assert (SHOTS / f"{page}.png").read_bytes().startswith(b"\x89PNG")
