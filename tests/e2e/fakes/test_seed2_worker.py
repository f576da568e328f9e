"""Tests of the seed-2 worker fake (fakes/seed2_worker.py) against a recording gateway: the shapes it registers and
heartbeats with, standby until activate, voices through /extract_voice, its error bodies.

Run: /usr/bin/python3 -m pytest tests/e2e/fakes/test_seed2_worker.py -q
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from fakes import audio_gen as ag
from fakes.seed2_worker import Seed2Worker

NODE_INFO = {"node_id", "engine_type", "host", "port", "status", "model_loaded", "registered_at", "last_heartbeat",
             "cpu_percent", "memory_percent", "gpu_percent", "gpu_memory_percent", "request_count", "error_count",
             "avg_response_time", "current_concurrent"}
NODE_METRICS = {"node_id", "timestamp", "cpu_percent", "memory_percent", "memory_used_mb", "gpu_percent",
                "gpu_memory_percent", "gpu_memory_used_mb", "status", "current_concurrent", "queue_size",
                "request_count", "error_count", "avg_response_time_ms"}


class Gateway:
    """Records what workers send; answers 200 {"success": true}."""

    def __init__(self):
        self.got = []
        self.lock = threading.Lock()
        gw = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                with gw.lock:
                    gw.got.append((method, self.path, json.loads(raw) if raw else None, dict(self.headers)))
                body = b'{"success":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self._answer("POST")

            def do_DELETE(self):
                self._answer("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, method, path_part):
        with self.lock:
            return [g for g in self.got if g[0] == method and path_part in g[1]]

    def wait(self, method, path_part, n=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.of(method, path_part)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return self.of(method, path_part)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gw():
    g = Gateway()
    yield g
    g.close()


def upload(w, vid, audio=None):
    audio = audio if audio is not None else ag.wav(ag.pcm("reference audio for a voice", "x", 24000), 24000)
    return requests.post(w.url + "/extract_voice", files={"audio": ("ref.wav", audio, "audio/wav")},
                         data={"voice_id": vid, "voice_name": "Voice " + vid}, timeout=10)


def test_registers_heartbeats_and_unregisters_in_seed2_shapes(gw):
    w = Seed2Worker(gw.url, engine="xtts", heartbeat_interval=0.05).start()
    try:
        reg = gw.wait("POST", "/api/nodes/register")
        assert len(reg) == 1
        body, headers = reg[0][2], reg[0][3]
        assert set(body) == NODE_INFO
        assert "url" not in body and "capacity" not in body and "Authorization" not in headers
        assert body["status"] == "standby" and body["model_loaded"] is False
        assert body["engine_type"] == "xtts" and body["port"] == w.port and body["node_id"] == w.node_id
        hb = gw.wait("POST", f"/api/nodes/{w.node_id}/heartbeat", n=2)
        assert len(hb) >= 2
        assert set(hb[0][2]) == NODE_METRICS and "model_loaded" not in hb[0][2]
        assert hb[0][2]["status"] == "standby"
    finally:
        w.stop()
    dl = gw.of("DELETE", f"/api/nodes/{w.node_id}")
    assert len(dl) == 1


def test_standby_until_activate_then_voices_and_errors():
    w = Seed2Worker(None, engine="openvoice").start()
    try:
        assert requests.get(w.url + "/health", timeout=5).json()["status"] == "degraded"
        info = requests.get(w.url + "/info", timeout=5).json()
        assert info["status"] == "standby" and info["model_loaded"] is False
        r = requests.post(w.url + "/synthesize", json={"text": "hi", "voice_id": "v1"}, timeout=5)
        assert r.status_code == 503 and r.json() == {"detail": "Model not loaded"}
        assert upload(w, "v1").status_code == 503
        r = requests.post(w.url + "/command", json={"command": "activate", "params": {}}, timeout=5)
        assert r.json() == {"success": True, "status": "ready"}
        assert requests.get(w.url + "/health", timeout=5).json()["status"] == "healthy"
        r = requests.post(w.url + "/synthesize", json={"text": "hi", "voice_id": "v1"}, timeout=5)
        assert r.status_code == 500 and r.json() == {"detail": "Voice not found: v1"}
        r = upload(w, "v1")
        assert r.status_code == 200
        assert r.json() == {"success": True, "message": "", "voice_id": "v1", "voice_name": "Voice v1",
                            "engine": "openvoice"}
        assert "v1" in w.voices
        r = requests.post(w.url + "/synthesize", json={"text": "Hello there.", "voice_id": "v1", "language": "en",
                                                       "output_format": "wav", "speed": 1.0, "pitch": 1.0}, timeout=5)
        assert r.status_code == 200 and r.content[:4] == b"RIFF" and r.headers["X-Node-Id"] == w.node_id
        # validation runs inside the handler: 500 with pydantic's message
        r = requests.post(w.url + "/synthesize", json={"text": "x", "voice_id": "v1", "speed": 3}, timeout=5)
        assert r.status_code == 500 and "validation error" in r.json()["detail"]
        r = requests.post(w.url + "/extract_voice", files={"x": ("a", b"1")}, timeout=5)
        assert r.status_code == 500 and r.json() == {"detail": "400: Missing audio file"}
        assert requests.post(w.url + "/command", json={"command": "fly"}, timeout=5).json() == \
            {"success": False, "error": "Unknown command: fly"}
        r = requests.post(w.url + "/command", json={"command": "unload_model"}, timeout=5)
        assert r.json() == {"success": True, "status": "standby"}
        assert requests.post(w.url + "/synthesize", json={"text": "hi", "voice_id": "v1"}, timeout=5).status_code == 503
    finally:
        w.kill()


def test_restart_empty_forgets_voices_and_registers_again(gw):
    w = Seed2Worker(gw.url, heartbeat_interval=5).start()
    try:
        requests.post(w.url + "/command", json={"command": "load_model"}, timeout=5)
        assert upload(w, "v2").status_code == 200
        port = w.port
        w.restart(empty=True)
        assert w.port == port and w.voices == {} and w.status == "standby"
        assert len(gw.wait("POST", "/api/nodes/register", n=2)) == 2
        requests.post(w.url + "/command", json={"command": "activate"}, timeout=5)
        r = requests.post(w.url + "/synthesize", json={"text": "hi", "voice_id": "v2"}, timeout=5)
        assert r.status_code == 500 and r.json()["detail"] == "Voice not found: v2"
    finally:
        w.kill()
