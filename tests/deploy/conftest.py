"""Harness of the deployment tests (make test-deploy): podman containers reached only through ports
published on 127.0.0.1, every wait a poll with a deadline, every container, network and volume a test
makes removed again (also on failure)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

IMAGE = os.environ.get("TTSHUB_IMAGE", "localhost/ttshub:latest")
BASE = "docker.io/library/debian:bookworm-slim"
CACHE = os.environ.get("TTSHUB_DEPLOY_CACHE", "/var/cache/ttshub-deploy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman(*args, check=True, timeout=120, **kw):
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def wait_until(what, fn, timeout, interval=0.25):
    """Polls fn until it returns a true value; fails with what after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except (requests.RequestException, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def wait_http(url, timeout, status=200):
    return wait_until(url, lambda: requests.get(url, timeout=5).status_code == status, timeout)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Containers:
    """Names of containers started by a test; all removed at the end, whatever happened."""

    def __init__(self):
        self.names = []

    def run(self, name, *args, image=IMAGE, cmd=(), timeout=120):
        self.names.append(name)
        podman("run", "-d", "--name", name, *args, image, *cmd, timeout=timeout)
        return name

    def logs(self, name):
        return podman("logs", name, check=False).stdout + podman("logs", name, check=False).stderr

    def cleanup(self):
        for n in self.names:
            podman("rm", "-f", "-t", "0", "-v", n, check=False)


@pytest.fixture
def containers():
    c = Containers()
    yield c
    c.cleanup()


def need(cmd):
    if shutil.which(cmd) is None:
        pytest.fail(f"{cmd} is missing: run `make test-deploy` (it installs the deployment tools)")


def need_image(name):
    if podman("image", "exists", name, check=False).returncode != 0:
        pytest.fail(f"image {name} is missing: `make test-deploy` builds it")
