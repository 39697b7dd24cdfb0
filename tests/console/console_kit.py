"""Test kit for the console: an HTTP client that keeps the session cookie, a headless Chromium, and load.

`Api` speaks to the console's JSON API as its page does (cookie, CSRF header,
JSON bodies) over real HTTP. `browser` starts Debian's Chromium through
chromium-driver with Selenium (never a downloaded browser); a test that needs
it is skipped when either is missing. `Load` runs a native producer and
consumer on threads against a server, so the console is looked at while
messages flow.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from dbqueue import Client
from dbqueue.errors import RequestError

CHROMIUM = os.environ.get("DBQUEUE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DBQUEUE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = os.environ.get("DBQUEUE_CONSOLE_SCREENSHOTS")  # a directory to keep the screenshots in (docs)


class Api:
    """The console's API at ``port`` as a browser session uses it: the cookie it was given, its CSRF token."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, csrf: bool = True
    ) -> tuple[int, dict[str, str], Any]:
        """One request; return (status, headers lower-cased, the JSON answer or the raw bytes)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        sent = dict(headers or {})
        if self.cookie is not None:
            sent.setdefault("Cookie", self.cookie)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if method == "POST" and csrf and self.csrf is not None:
            sent.setdefault("X-Dbqueue-Csrf", self.csrf)
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            raw = response.read()
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
            set_cookie = response.getheader("Set-Cookie")
        finally:
            connection.close()
        if set_cookie:
            morsel = next(iter(SimpleCookie(set_cookie).values()))
            self.cookie = f"{morsel.key}={morsel.value}" if morsel.value else None
        try:
            answer: Any = json.loads(raw)
        except ValueError:
            answer = raw
        return response.status, answer_headers, answer

    def open(self) -> dict[str, Any]:
        """Ask for the session (a server without a token opens one); keep its CSRF token."""
        status, _, answer = self.request("GET", "/console/api/session")
        assert status == 200, answer
        self.csrf = answer["csrf"]
        return dict(answer)

    def login(self, token: str) -> int:
        status, _, answer = self.request("POST", "/console/api/login", {"token": token})
        if status == 200:
            self.csrf = answer["csrf"]
        return status

    def get(self, call: str) -> Any:
        status, _, answer = self.request("GET", f"/console/api/{call}")
        assert status == 200, (status, answer)
        return answer

    def post(self, call: str, body: dict[str, Any]) -> tuple[int, Any]:
        status, _, answer = self.request("POST", f"/console/api/{call}", body)
        return status, answer


def key(name: str | bytes) -> str:
    """A queue's key in the console's API: the hex of its name's bytes."""
    return (name.encode() if isinstance(name, str) else name).hex()


def figures(api: Api, name: str) -> dict[str, Any]:
    """The overview's figures of queue ``name``."""
    for queue in api.get("overview")["queues"]:
        if queue["name"] == name:
            return dict(queue)
    raise AssertionError(f"no queue {name!r} in the overview")


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def start_browser() -> Any:
    """Debian's Chromium, headless, driven by chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root (CI's container)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def save_screenshot(driver: Any, directory: Path, name: str) -> Path:
    """Save the page as ``name``.png in ``directory``, and in `SCREENSHOTS` too when set."""
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; return it, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as error:  # a page mid-render: try again
            last = error
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Load:
    """A producer sending to ``queue`` and a consumer reading and confirming from it, each on a thread.

    ``send_every`` and ``read_every``: seconds between two messages. A refusal
    (the queue was deleted or purged under it) is counted in ``refused`` and the
    load goes on. `stop` ends both and returns (sent, confirmed).
    """

    def __init__(self, address: str, queue: str, send_every: float = 0.002, read_every: float = 0.004) -> None:
        self.address = address
        self.queue = queue
        self.send_every = send_every
        self.read_every = read_every
        self.sent = 0
        self.confirmed = 0
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def _produce(self) -> None:
        with Client.connect(self.address) as client:
            while not self._stop.is_set():
                try:
                    client.send(self.queue, b'{"job": %d}' % self.sent)
                    self.sent += 1
                except RequestError:
                    self.refused += 1
                time.sleep(self.send_every)

    def _consume(self) -> None:
        with Client.connect(self.address) as client:
            while not self._stop.is_set():
                try:
                    message = client.read(self.queue, wait=0.1)
                    if message is not None:
                        client.confirm(message.id)
                        self.confirmed += 1
                except RequestError:
                    self.refused += 1
                time.sleep(self.read_every)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        return self.sent, self.confirmed
