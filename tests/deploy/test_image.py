"""The ttshub image: its metadata (non-root, ports, health check, volume), a container with a mounted
config speaking every format through the published port, /metrics on its own port, the health check, and
SIGTERM while a stream is in flight: the stream completes, then the container exits 0."""
import json
import os
import shutil
import tempfile

import pytest
import requests

from audio import CODEC, decoded_seconds, probe
from conftest import IMAGE, free_port, need, need_image, podman, unique, wait_until

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]

CONFIG = """
listen: "0.0.0.0:8080"
metrics_listen: "0.0.0.0:9090"
data_dir: /var/lib/ttshub
limits: { shutdown_grace: 30s }
providers:
  - { name: local, type: espeak }
"""

LONG = " ".join("Sentence %d of a long text that is streamed while the container is told to stop." % i
                for i in range(40))


@pytest.fixture(scope="module")
def hub():
    need("podman")
    need_image(IMAGE)
    conf = tempfile.mkdtemp(prefix="ttshub-image-")
    os.chmod(conf, 0o755)  # read by the image's ttshub user (uid 10001)
    with open(os.path.join(conf, "ttshub.yaml"), "w") as f:
        f.write(CONFIG)
    os.chmod(os.path.join(conf, "ttshub.yaml"), 0o644)
    port, mport = free_port(), free_port()
    name = unique("ttshub-img")
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{mport}:9090",
           "-v", f"{conf}:/etc/ttshub:ro", IMAGE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until("the container's /health", lambda: requests.get(url + "/health", timeout=5).ok, 60)
        yield name, url, f"http://127.0.0.1:{mport}"
    finally:
        podman("rm", "-f", "-t", "0", "-v", name, check=False)
        shutil.rmtree(conf, ignore_errors=True)


def test_image_metadata():
    need_image(IMAGE)
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert {"8080/tcp", "9090/tcp"} <= set(cfg["ExposedPorts"])
    assert "/var/lib/ttshub" in cfg["Volumes"]
    assert cfg["Entrypoint"] == ["/usr/bin/ttshub"]
    hc = info.get("Healthcheck") or cfg.get("Healthcheck")
    assert hc and "/health" in " ".join(hc["Test"]), info.keys()
    # the runtime stage got its libraries from the package's Depends, not from the build stage
    p = podman("run", "--rm", "--entrypoint", "dpkg-query", IMAGE, "-W", "-f", "${Status} ${Version}\\n",
               "ttshub", "libavcodec59", "libespeak-ng1")
    assert p.stdout.count("install ok installed") == 3, p.stdout
    p = podman("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", "id -u; command -v gcc cmake || true")
    assert p.stdout.split() == ["10001"], p.stdout  # non-root, and no compiler in the runtime image


@pytest.mark.parametrize("fmt", FORMATS)
def test_speaks_every_format(hub, fmt):
    name, url, _ = hub
    r = requests.post(url + "/api/generate", data={"input": f"The container speaks {fmt}.", "voice": "nova",
                                                   "response_format": fmt}, timeout=60)
    assert r.status_code == 200, r.text
    if fmt != "pcm":
        assert probe(r.content, fmt)[0]["codec_name"] == CODEC[fmt]
    assert decoded_seconds(r.content, fmt) > 0.8
    r = requests.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": "OpenAI's protocol too.",
                                                      "voice": "alloy", "response_format": fmt}, timeout=60)
    assert r.status_code == 200 and decoded_seconds(r.content, fmt) > 0.8


def test_metrics_port_and_health_check(hub):
    name, url, murl = hub
    m = requests.get(murl + "/metrics", timeout=10)
    assert m.status_code == 200 and "ttshub_requests_total" in m.text
    assert requests.get(murl + "/health", timeout=10).json()["status"] in ("healthy", "degraded")
    p = podman("healthcheck", "run", name, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    top = podman("top", name, "user", "comm").stdout
    assert any(line.split()[:2] == ["ttshub", "ttshub"] for line in top.splitlines()[1:]), top


def test_sigterm_drains_a_stream(containers):
    need_image(IMAGE)
    port = free_port()
    name = containers.run(unique("ttshub-drain"), "-p", f"127.0.0.1:{port}:8080", image=IMAGE)
    url = f"http://127.0.0.1:{port}"
    wait_until("the container's /health", lambda: requests.get(url + "/health", timeout=5).ok, 60)
    r = requests.post(url + "/v1/audio/speech", json={"input": LONG, "voice": "alloy", "response_format": "mp3"},
                      stream=True, timeout=120)
    assert r.status_code == 200
    it = r.iter_content(4096)
    body = next(it)  # the stream has started, the rest waits on this client
    podman("kill", "--signal", "TERM", name)
    wait_until("the hub to start draining", lambda: "draining" in containers.logs(name), 30)
    for chunk in it:
        body += chunk
    assert decoded_seconds(body, "mp3") > 60  # the whole text, not a cut stream
    code = podman("wait", name, timeout=60).stdout.strip()
    assert code == "0", containers.logs(name)
    assert "drained; stopping" in containers.logs(name)
