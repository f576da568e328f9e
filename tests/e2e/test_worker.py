"""`ttshub worker`: the engine node. Against a recording fake gateway (every call of the registration
protocol is checked), and as real workers behind a real hub (traffic end to end, decoded by ffprobe)."""
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from audio import decoded_seconds, probe
from conftest import Hub, free_port, wait_until

TOKEN = "worker-cluster-token-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Gateway:
    """A fake gateway: records register / heartbeat / delete calls; can answer 404 to heartbeats, be down,
    or come up late."""

    def __init__(self, interval=0.3, port=None, start=True):
        self.calls = []  # (method, path, headers, json body, time)
        self.interval = interval
        self.forget = False  # heartbeats get 404 (the gateway restarted)
        self.lock = threading.Lock()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.srv = None
        if start:
            self.start()

    def start(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def _answer(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self):
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                with outer.lock:
                    outer.calls.append((self.command, self.path, dict(self.headers), body, time.time()))
                return body

            def do_POST(self):
                body = self._record()
                if self.path == "/api/nodes/register":
                    nid = body.get("node_id") or "assigned-1"
                    self._answer(200, {"success": True, "node_id": nid, "heartbeat_interval": outer.interval})
                elif self.path.endswith("/heartbeat"):
                    if outer.forget:
                        self._answer(404, {"success": False, "message": "unknown node", "code": "unknown_node"})
                    else:
                        self._answer(200, {"success": True})
                else:
                    self._answer(404, {})

            def do_DELETE(self):
                self._record()
                self._answer(200, {"success": True})

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        if self.srv:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None

    def of(self, method, suffix):
        with self.lock:
            return [c for c in self.calls if c[0] == method and c[1].endswith(suffix)]

    def wait(self, method, suffix, count=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.of(method, suffix)) >= count:
                return self.of(method, suffix)
            time.sleep(0.05)
        return self.of(method, suffix)


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.stop()


def worker_args(gateway_url, port, *more):
    return ["--engine", "espeak", "--gateway", gateway_url, "--advertise", f"http://127.0.0.1:{port}", *more]


def start_worker(hub_factory, gateway_url, *more, env=None):
    port = free_port()
    w = hub_factory(None, command="worker", env=env or {"TTSHUB_CLUSTER_TOKEN": TOKEN},
                    extra_args=worker_args(gateway_url, port, *more), port=port)
    return w


def test_registration_protocol(hub_factory, gateway):
    w = start_worker(hub_factory, gateway.url, "--capacity", "3", "--voices", "alloy,echo", "--languages", "en,de")
    reg = gateway.wait("POST", "/api/nodes/register")
    assert reg, "no registration"
    _, _, headers, body, _ = reg[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert body == {"engine_type": "espeak", "url": w.url, "host": "127.0.0.1", "port": int(w.url.rsplit(":", 1)[1]),
                    "capacity": 3, "model_loaded": True, "status": "online",
                    "voices": ["alloy", "echo"], "languages": ["en", "de"]}
    # heartbeats at the interval the gateway gave (0.3 s)
    beats = gateway.wait("POST", "/assigned-1/heartbeat", count=4)
    assert len(beats) >= 4
    b = beats[-1][3]
    assert b["status"] == "online" and b["model_loaded"] is True and b["current_concurrent"] == 0
    assert b["queue_size"] == 0 and 0 <= b["cpu_percent"] and 0 < b["memory_percent"] < 100
    gaps = [beats[i + 1][4] - beats[i][4] for i in range(len(beats) - 1)]
    assert all(0.15 < g < 2.0 for g in gaps), gaps
    # the gateway forgot the node: it registers again, with its id
    gateway.forget = True
    again = gateway.wait("POST", "/api/nodes/register", count=2)
    assert len(again) >= 2 and again[1][3]["node_id"] == "assigned-1"
    gateway.forget = False
    # SIGTERM: DELETE, then exit 0
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(15) == 0
    dels = gateway.of("DELETE", "/api/nodes/assigned-1")
    assert len(dels) == 1 and dels[0][2]["Authorization"] == f"Bearer {TOKEN}"


def test_gateway_down_at_start(hub_factory):
    g = Gateway(start=False)
    try:
        w = start_worker(hub_factory, g.url, "--node-id", "late-1")
        time.sleep(1.2)  # a few failed attempts
        assert w.get("/info", headers=AUTH).json()["registered"] is False
        g.start()
        reg = g.wait("POST", "/api/nodes/register", timeout=15)
        assert reg and reg[0][3]["node_id"] == "late-1"
        deadline = time.time() + 10
        while time.time() < deadline and not w.get("/info", headers=AUTH).json()["registered"]:
            time.sleep(0.1)
        assert w.get("/info", headers=AUTH).json()["registered"] is True
    finally:
        g.stop()


def test_node_routes(hub_factory, gateway):
    w = start_worker(hub_factory, gateway.url, "--node-id", "n-1")
    gateway.wait("POST", "/api/nodes/register")
    info = w.get("/info", headers=AUTH).json()
    assert info["node_id"] == "n-1" and info["engine_type"] == "espeak" and info["status"] == "online"
    assert info["capacity"] == 4 and info["model_loaded"] is True and info["version"]
    assert w.get("/health").json()["status"] == "healthy"
    for fmt, codec in (("wav", "pcm_s16le"), ("mp3", "mp3"), ("opus", "opus")):
        r = w.post("/synthesize", headers=AUTH, json={"text": "A worker node speaks.", "voice": "alloy", "format": fmt, "speed": 1.0})
        assert r.status_code == 200, r.text
        assert r.headers["X-Node-Id"] == "n-1" and r.headers["X-Engine"] == "espeak"
        assert probe(r.content, fmt)[0]["codec_name"] == codec
        assert decoded_seconds(r.content, fmt) > 0.5
    # faster speech is shorter
    slow = w.post("/synthesize", headers=AUTH, json={"text": "Speed changes the length.", "speed": 0.5})
    fast = w.post("/synthesize", headers=AUTH, json={"text": "Speed changes the length.", "speed": 2.0})
    assert decoded_seconds(slow.content, "wav") > decoded_seconds(fast.content, "wav") * 2
    # errors in the node shape
    for body, status in (({"voice": "alloy"}, 400), ({"text": ""}, 400), ({"text": "x", "format": "ogg-vorbis"}, 400),
                         ({"text": "x", "speed": 9}, 400), ({"text": "x", "voice": 5}, 400)):
        r = w.post("/synthesize", headers=AUTH, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["success"] is False and r.json()["message"] and r.json()["code"]
    r = w.post("/synthesize", headers=dict(AUTH, **{"Content-Type": "application/json"}), data=b"{oops")
    assert r.status_code == 400 and r.json()["success"] is False
    # standby: 503, and the heartbeat says so; activate: back
    r = w.post("/command", headers=AUTH, json={"command": "standby"})
    assert r.json() == {"success": True, "status": "standby"}
    r = w.post("/synthesize", headers=AUTH, json={"text": "not now"})
    assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["code"] == "unavailable"
    deadline = time.time() + 5
    while time.time() < deadline and gateway.of("POST", "/heartbeat")[-1][3]["status"] != "standby":
        time.sleep(0.1)
    assert gateway.of("POST", "/heartbeat")[-1][3]["status"] == "standby"
    assert w.post("/command", headers=AUTH, json={"command": "activate"}).json()["status"] == "online"
    assert w.post("/synthesize", headers=AUTH, json={"text": "back again"}).status_code == 200
    r = w.post("/command", headers=AUTH, json={"command": "reboot"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_command"
    # stop: answers, unregisters, exits 0
    assert w.post("/command", headers=AUTH, json={"command": "stop"}).json()["status"] == "stopping"
    assert w.proc.wait(15) == 0
    assert gateway.of("DELETE", "/api/nodes/n-1")


def test_bad_command_lines(hub_factory):
    import subprocess
    from conftest import BIN
    for args in (["--engine", "nope"], ["--engine", "espeak"], ["--engine", "xtts", "--gateway", "http://g",
                                                                  "--advertise", "http://a", "--listen", "127.0.0.1:1"],
                 ["--engine", "espeak", "--gateway", "ftp://g", "--advertise", "http://a", "--listen", "x"],
                 ["--capacity", "0"], ["--bogus", "1"]):
        p = subprocess.run([BIN, "worker", *args], capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, (args, p.stderr)
        assert "ttshub worker:" in p.stderr and "usage:" in p.stderr


def test_real_workers_behind_a_real_hub(hub_factory):
    env = {"TTSHUB_CLUSTER_TOKEN": TOKEN}
    hub = hub_factory("providers:\n  - { name: pool, type: nodes, engine: espeak, strategy: round_robin }\n"
                      "cache: { enabled: false }\n"
                      "registry: { heartbeat_interval: 1s, dead_threshold: 3s, remove_after: 10s }\n", env=env)
    workers = [start_worker(hub_factory, hub.url, "--node-id", f"w{i}", "--capacity", "2") for i in range(2)]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.time() + 10
    while time.time() < deadline and hub.get("/api/nodes", headers=auth).json()["count"] < 2:
        time.sleep(0.1)
    nodes = {n["node_id"]: n for n in hub.get("/api/nodes", headers=auth).json()["nodes"]}
    assert set(nodes) == {"w0", "w1"} and all(n["status"] == "online" for n in nodes.values())
    assert nodes["w0"]["url"] == workers[0].url
    for i in range(4):
        r = hub.post(data={"input": f"Through the pool, request {i}.", "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Provider"] == "pool"
        assert probe(r.content, "mp3")[0]["codec_name"] == "mp3" and decoded_seconds(r.content, "mp3") > 0.5
    r = hub.post("/v1/audio/speech", json={"model": "tts-1", "input": "OpenAI route too.", "voice": "alloy",
                                            "response_format": "flac"})
    assert r.status_code == 200 and probe(r.content, "flac")[0]["codec_name"] == "flac"
    counts = {n["node_id"]: n["requests"] for n in hub.get("/api/nodes", headers=auth).json()["nodes"]}
    assert counts["w0"] >= 2 and counts["w1"] >= 2, counts
    # a worker told to stand by through the hub gets nothing more
    assert hub.post("/api/nodes/w1/command", headers=auth, json={"command": "standby"}).json()["status"] == "standby"
    assert workers[1].get("/info", headers=AUTH).json()["status"] == "standby"
    before = counts["w1"]
    for i in range(3):
        assert hub.post(data={"input": f"only w0 now {i}", "voice": "alloy"}).status_code == 200
    assert {n["node_id"]: n["requests"] for n in hub.get("/api/nodes", headers=auth).json()["nodes"]}["w1"] == before
    # a worker that stops unregisters: the hub forgets it at once
    workers[0].proc.send_signal(signal.SIGTERM)
    assert workers[0].proc.wait(15) == 0
    ids = [n["node_id"] for n in hub.get("/api/nodes", headers=auth).json()["nodes"]]
    assert ids == ["w1"]
    # the hub restarts: the remaining worker registers again by itself (heartbeat 404)
    hub_port = hub.port
    hub.check_clean_exit()
    hub2 = hub_factory("providers:\n  - { name: pool, type: nodes, engine: espeak }\n"
                       "registry: { heartbeat_interval: 1s, dead_threshold: 3s, remove_after: 10s }\n",
                       env=env, port=hub_port)
    deadline = time.time() + 15
    while time.time() < deadline and hub2.get("/api/nodes", headers=auth).json()["count"] < 1:
        time.sleep(0.1)
    assert [n["node_id"] for n in hub2.get("/api/nodes", headers=auth).json()["nodes"]] == ["w1"]


def test_library_voice_skips_a_pool_of_espeak_workers(hub_factory):
    """A pool of espeak workers cannot speak a library voice: with it first in priority (as in the compose
    cluster), a library voice goes to the cloning engine behind it, and no worker is sent the reference."""
    from fakes.engines import FakeEngine
    from test_voices import extract, make_audio

    cosy = FakeEngine("cosyvoice").start()
    try:
        env = {"TTSHUB_CLUSTER_TOKEN": TOKEN}
        hub = hub_factory('data_dir: "@DATA@"\n'
                          "log: { level: info, format: json }\n"
                          "router: { strategy: priority, retries: 1, fallback: true }\n"
                          "registry: { heartbeat_interval: 1s, dead_threshold: 3s, remove_after: 10s }\n"
                          "providers:\n"
                          "  - { name: pool, type: nodes, engine: espeak, priority: 0 }\n"
                          "  - { name: local, type: espeak, priority: 1 }\n"
                          f'  - {{ name: clone, type: cosyvoice, base_url: "{cosy.url}", priority: 2 }}\n', env=env)
        w = start_worker(hub_factory, hub.url, "--node-id", "w0")
        assert wait_until(lambda: hub.get("/api/nodes", headers=AUTH).json()["count"] == 1, timeout=10)
        r = extract(hub, make_audio("wav", 3.0), "wav", voice_id="lib1", reference_text="the reference words")
        assert r.status_code == 201, r.text
        s = hub.post("/api/synthesize", json={"text": "Spoken in the library voice.", "voice_id": "lib1"})
        assert s.status_code == 200, s.text
        assert s.headers["X-Provider"] == "clone"
        assert decoded_seconds(s.content, "wav") > 0.5
        assert len(cosy.references) == 1 and cosy.references[0]["text"] == "the reference words"
        # plain voices still go to the pool first
        p = hub.post(data={"input": "A plain voice.", "voice": "alloy"})
        assert p.status_code == 200 and p.headers["X-Provider"] == "pool"
        assert not [x for x in w.log_lines() if "/synthesize" == x.get("route") and x.get("voice_id")]
        assert not [x for x in w.log_lines() if "storing reference" in x.get("msg", "")]
    finally:
        cosy.stop()
