#!/usr/bin/python3
"""The Webhooks page in a real headless browser (.ci/browser-test.sh runs it).

Usage: browser-test.py CDRHOOK_BINARY

Starts a receiver (.ci/systemd-test-receiver.py), the daemon with its HTTP
listener on a loopback port with a bearer token, drops one CDR into the
spool, then drives Debian's Chromium (headless, JavaScript off for the page)
through the DevTools protocol:

  1. /               loads and lists the subscription;
  2. /attempts       lists the CDR's attempt;
  3. a click on that row's Resend button (a real mouse click, a form POST
                     with the CSRF token) lands on the result page, and the
                     receiver got exactly one more request.

Prints one PASS or FAIL line per check and exits 1 on any failure. When
Chromium cannot be started it fails (exit 1), it never skips. Standard
library and Debian's python3-websocket only: run it with /usr/bin/python3.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "browser-test-token-0123456789"
FAILED = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILED.append(what)
    return ok


def wait_for(pred, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def lines(path):
    return [l for l in read(path).splitlines() if l.strip()]


class Cdp:
    """A minimal DevTools protocol client over one page target."""

    def __init__(self, ws_url):
        # Chromium refuses DevTools websockets that send an Origin header.
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, name, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == name:
                    del self.events[: i + 1]
                    return e.get("params", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %s within %ss" % (name, timeout))
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if "method" in msg:
                self.events.append(msg)

    def eval(self, expression):
        """Evaluated by DevTools in the page (the page itself runs no script)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("evaluate %r: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def navigate(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def click(self, selector):
        """A real mouse click at the centre of the element."""
        box = self.eval(
            "(() => { const e = document.querySelector(%s); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()" % json.dumps(selector)
        )
        if not box:
            raise RuntimeError("nothing to click at %s" % selector)
        x, y = box
        self.events.clear()
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, name):
        shots = os.environ.get("CDRHOOK_BROWSER_SHOTS")
        if shots:
            os.makedirs(shots, exist_ok=True)
            data = self.call("Page.captureScreenshot", format="png")["data"]
            with open(os.path.join(shots, name + ".png"), "wb") as f:
                f.write(base64.b64decode(data))


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def start_chromium(tmp):
    binary = chromium_binary()
    if not binary:
        raise RuntimeError("Chromium is not installed (apt-get install chromium)")
    profile = os.path.join(tmp, "chromium")
    log = open(os.path.join(tmp, "chromium.log"), "wb")
    proc = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1400,1000",
            "--remote-debugging-port=0",
            "--user-data-dir=" + profile,
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    active = os.path.join(profile, "DevToolsActivePort")
    try:
        wait_for(lambda: proc.poll() is not None or read(active).strip(), "Chromium's DevTools port", 60)
    except TimeoutError:
        pass
    if proc.poll() is not None or not read(active).strip():
        proc.kill()
        raise RuntimeError(
            "Chromium did not start (exit %s): %s"
            % (proc.poll(), read(os.path.join(tmp, "chromium.log"))[-2000:])
        )
    port = int(read(active).splitlines()[0])
    return proc, port


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    tmp = tempfile.mkdtemp(prefix="cdrhook-browser-")
    procs = []
    daemon_log = os.path.join(tmp, "daemon.log")
    try:
        # The receiver.
        rx = os.path.join(tmp, "rx")
        os.makedirs(rx)
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "systemd-test-receiver.py"), rx]))
        rx_port = int(wait_for(lambda: read(os.path.join(rx, "port")).strip(), "the receiver's port"))

        # The daemon, its HTTP listener on loopback with a token.
        for d in ("spool", "spool/rejected", "spool/archive"):
            os.makedirs(os.path.join(tmp, d))
        token_file = os.path.join(tmp, "http.token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token_file, 0o600)
        http_port = free_port()
        config = os.path.join(tmp, "config.yaml")
        with open(config, "w") as f:
            f.write(
                "spool:\n  dir: %(t)s/spool\n  rejected_dir: %(t)s/spool/rejected\n"
                "  archive_dir: %(t)s/spool/archive\n"
                "journal:\n  path: %(t)s/journal\n"
                "control:\n  socket: %(t)s/control.sock\n"
                "http:\n  listen: 127.0.0.1:%(h)d\n  token_file: %(t)s/http.token\n"
                "delivery:\n  timeout: 5s\n"
                "subscriptions:\n"
                "  - name: crm\n    endpoint: http://127.0.0.1:%(r)d/crm\n"
                "    events: [\"*\"]\n"
                "    headers:\n      X-Api-Key: browser-test-secret-value\n"
                % {"t": tmp, "h": http_port, "r": rx_port}
            )
        with open(daemon_log, "wb") as log:
            procs.append(
                subprocess.Popen(
                    [binary, "run", "--config", config],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, RUST_LOG="info"),
                )
            )
        base = "http://127.0.0.1:%d" % http_port

        def healthy():
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, "the daemon's /healthz at " + base)

        # One CDR, delivered once.
        spool = os.path.join(tmp, "spool")
        with open(os.path.join(HERE, "..", "examples", "cdr", "queue-answered.json"), "rb") as f:
            cdr = f.read()
        with open(os.path.join(spool, ".one.json.tmp"), "wb") as f:
            f.write(cdr)
        os.rename(os.path.join(spool, ".one.json.tmp"), os.path.join(spool, "one.json"))
        got = os.path.join(rx, "got.log")
        wait_for(lambda: len(lines(got)) == 1, "the CDR's first delivery")

        # The browser, with the page's script execution off: the page must
        # read and act without JavaScript.
        chromium, devtools_port = start_chromium(tmp)
        procs.append(chromium)
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % devtools_port, timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        cdp = Cdp(page["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Network.enable")
        cdp.call(
            "Network.setExtraHTTPHeaders",
            headers={"Authorization": "Bearer " + TOKEN},
        )
        cdp.call("Emulation.setScriptExecutionDisabled", value=True)

        # 1. The page loads and lists the subscription, its secret masked.
        cdp.navigate(base + "/")
        cdp.screenshot("1-webhooks")
        title = cdp.eval("document.title")
        names = cdp.eval(
            "Array.from(document.querySelectorAll('table.subscriptions tbody tr td:first-child'))"
            ".map(td => td.textContent.trim())"
        )
        text = cdp.eval("document.body.innerText") or ""
        check(bool(title) and title.startswith("Webhooks"), "/ loads (title %r)" % title)
        check(names == ["crm"], "/ lists the subscription (%r)" % names)
        check(
            "browser-test-secret-value" not in text and "X-Api-Key: ***" in text,
            "/ shows the extra header masked",
        )

        # 2. The attempt history lists the attempt.
        cdp.navigate(base + "/attempts")
        cdp.screenshot("2-attempts")
        rows = cdp.eval(
            "Array.from(document.querySelectorAll('table.attempts tbody tr'))"
            ".map(tr => Array.from(tr.cells).map(td => td.textContent.trim()))"
        ) or []
        check(
            len(rows) == 1 and rows[0][0].startswith("a") and rows[0][2] == "crm",
            "/attempts lists the one attempt (%r)" % rows,
        )

        # 3. A click on Resend: one new attempt at the receiver.
        before = len(lines(got))
        cdp.click("table.attempts tbody tr form button")
        cdp.wait_event("Page.loadEventFired")
        cdp.screenshot("3-result")
        path = cdp.eval("location.pathname") or ""
        result = cdp.eval("document.body.innerText") or ""
        check(path.startswith("/results/"), "Resend lands on its result page (%s)" % path)
        check("Sent" in result and "204" in result, "the result page says it was sent (204)")
        try:
            wait_for(lambda: len(lines(got)) >= before + 1, "the resend at the receiver", 10)
        except TimeoutError:
            pass
        # Nothing else is in flight: a second request would be a double send.
        time.sleep(0.5)
        after = len(lines(got))
        check(after == before + 1, "the receiver got exactly one more request (%d -> %d)" % (before, after))
        cdp.navigate(base + "/attempts")
        rows = cdp.eval(
            "Array.from(document.querySelectorAll('table.attempts tbody tr'))"
            ".map(tr => tr.cells[8].textContent.trim())"
        ) or []
        check(rows == ["resend", "auto"], "/attempts shows the resend, newest first (%r)" % rows)
    except Exception as e:  # a broken step is a failure, never a skip
        check(False, "%s: %s" % (type(e).__name__, e))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if FAILED:
            print("--- daemon log (tail)")
            print(read(daemon_log)[-3000:])
            print("--- kept for inspection: " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if FAILED:
        print("browser test: %d check(s) failed" % len(FAILED))
        return 1
    print("browser test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
