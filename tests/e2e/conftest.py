"""End-to-end harness: runs the real ttshub binary on free loopback ports."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("TTSHUB_BIN", os.path.join(ROOT, "build", "ttshub"))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


def wait_until(fn, timeout=10, interval=0.05):
    """Polls fn until it returns something true (returned), or the deadline passes (returns fn's last value)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    return fn()


# Ports for processes a test starts come from a range of this pytest worker's own, below the kernel's
# ephemeral range (32768+), so parallel workers (pytest-xdist) and outgoing connections never pick the
# port a test is about to hand to a hub. A port is taken only if it binds right now.
_PORT_STATE = {"next": None}
_PORT_SPAN = 3000


def _port_range():
    wid = os.environ.get("PYTEST_XDIST_WORKER", "")
    n = int(wid[2:]) if wid.startswith("gw") and wid[2:].isdigit() else 0
    base = 20000 + (n % 4) * _PORT_SPAN
    return base, base + _PORT_SPAN


def free_port():
    lo, hi = _port_range()
    if _PORT_STATE["next"] is None:
        _PORT_STATE["next"] = lo + (os.getpid() % 97) * 7
    for _ in range(hi - lo):
        port = _PORT_STATE["next"]
        _PORT_STATE["next"] = lo if port + 1 >= hi else port + 1
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in %d..%d" % (lo, hi))


class Hub:
    """One ttshub serve (or worker) process with its own config, data dir and log."""

    def __init__(self, config_text=None, extra_args=(), env=None, workdir=None, command="serve", port=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="ttshub-e2e-")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "stderr-%d.log" % self.port)
        args = [BIN, command, "--listen", f"127.0.0.1:{self.port}"]
        if config_text is not None:
            self.config_path = os.path.join(self.dir, "ttshub.yaml")
            with open(self.config_path, "w") as f:
                f.write(config_text.replace("@DATA@", os.path.join(self.dir, "data")))
            args += ["-c", self.config_path]
        args += list(extra_args)
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        e["LSAN_OPTIONS"] = "suppressions=" + os.path.join(ROOT, "tests", "lsan.supp") + ":print_suppressions=0"
        if env:
            e.update(env)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=e, cwd=self.dir)
        self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ttshub exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = requests.get(self.url + "/health", timeout=1)
                if r.status_code in (200, 503):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("ttshub did not become ready:\n" + self.output())

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        out = []
        for line in self.output().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def post(self, path="/api/generate", **kw):
        kw.setdefault("timeout", 60)
        return requests.post(self.url + path, **kw)

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.get(self.url + path, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("ttshub did not stop after SIGTERM:\n" + self.output()[-4000:])
        self.log.close()
        return self.proc.returncode

    def check_clean_exit(self):
        rc = self.stop()
        out = self.output()
        for mark in SANITIZER_MARKS:
            assert mark not in out, f"sanitizer report in ttshub output:\n{out[-8000:]}"
        assert rc == 0, f"ttshub exited with {rc}:\n{out[-4000:]}"


@pytest.fixture
def hub_factory():
    hubs = []

    def make(config_text=None, **kw):
        h = Hub(config_text, **kw)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.check_clean_exit()


@pytest.fixture(scope="module")
def hub():
    """A shared hub on the embedded default config."""
    h = Hub()
    yield h
    h.check_clean_exit()


# ---- a real redis-server on loopback (scale-out tests) ----

class Redis:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    s.close()
                    return
                s.close()
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server():
    r = Redis()
    yield r
    r.stop()
