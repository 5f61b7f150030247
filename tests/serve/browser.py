"""Headless Chromium (Debian's ``chromium``) driven through the DevTools protocol, for UI tests that
click: one page, ``goto``, ``js`` (evaluate, awaiting promises), ``wait_for`` a condition inside the
page, ``screenshot``. The websocket is aiohttp's (already installed with Ray); no extra driver."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import _start, _stop


class Browser:
    def __init__(self, tmp_path: Path, width: int = 1600, height: int = 1200):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
        profile = tmp_path / "chromium-profile"
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = _start(cmd, tmp_path / "chromium.log")
        self.loop = asyncio.new_event_loop()
        self._id = 0
        try:
            self.loop.run_until_complete(self._connect(tmp_path / "chromium.log"))
        except BaseException:
            self.close()
            raise

    async def _connect(self, log: Path) -> None:
        """Chromium prints its DevTools websocket URL on stderr once it listens."""
        url = None
        for _ in range(600):  # a bounded wait on the process's own output, not on a clock
            text = log.read_text(errors="replace") if log.exists() else ""
            url = next((w for w in text.split() if w.startswith("ws://")), None)
            if url or self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if not url:
            raise RuntimeError(f"chromium did not start: {log.read_text(errors='replace')[-2000:]}")
        port = url.split("/")[2]
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://{port}/json/list") as res:
            page = next(t for t in await res.json() if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    def send(self, method: str, **params):
        return self.loop.run_until_complete(self._send(method, params))

    async def _send(self, method: str, params: dict):
        self._id += 1
        await self.ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, condition: str, timeout_ms: int = 120_000):
        """Wait until the JavaScript ``condition`` is truthy in the page (checked on every DOM change
        and a few times a second);
        its value, or an AssertionError with the page's text when it never holds (the timeout is a bound
        for a broken page, not part of what is tested)."""
        value = self.js(
            f"""new Promise(resolve => {{
                const check = () => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }};
                const done = v => {{ observer.disconnect(); clearInterval(poll); clearTimeout(timer); resolve(v); }};
                const recheck = () => {{ const v = check(); if (v) done(v); }};
                const observer = new MutationObserver(recheck);
                const poll = setInterval(recheck, 250);  // image loads change no DOM node
                const timer = setTimeout(() => done(null), {timeout_ms});
                observer.observe(document, {{subtree: true, childList: true, attributes: true,
                                             characterData: true}});
                const v = check(); if (v) done(v);
            }})"""
        )
        assert value, f"never true: {condition}\npage text: {self.js('document.body.innerText')[-3000:]}"
        return value

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "session", None) is not None:
            self.loop.run_until_complete(self.session.close())
            self.session = None
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        self.loop.close()
