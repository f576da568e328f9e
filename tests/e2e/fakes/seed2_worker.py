"""A faithful fake of a seed-2 voice-clone-tts worker node (githubstudycloud/gi005, voice-clone-tts/src:
workers/base_worker.py with common/models.py), as ttshub meets it when the worker registers with the hub.

What it does, as the real BaseWorker does:
- on start, registers with POST {gateway}/api/nodes/register carrying a NodeInfo dump (node_id, engine_type, host,
  port, status "standby", model_loaded false, registered_at, last_heartbeat, resource and count fields; no url, no
  capacity, no credential); the answer is only logged (any 200 is fine);
- heartbeats POST {gateway}/api/nodes/{id}/heartbeat with a NodeMetrics dump (no model_loaded), ignoring answers;
- starts in standby: /synthesize and /extract_voice answer 503 {"detail":"Model not loaded"} until a command
  `activate` or `load_model` (POST /command {command, params}) loads the model (then status "ready");
  `standby`/`unload_model` unload it, `stop` unregisters (DELETE {gateway}/api/nodes/{id}) and goes offline; an
  unknown command is 200 {"success":false,"error":...};
- POST /extract_voice multipart (audio file, voice_id, voice_name) stores the voice -> ExtractVoiceResponse;
  no audio -> 500 {"detail":"400: Missing audio file"} (the real handler's except clause turns its own 400 into a 500);
- POST /synthesize JSON SynthesizeRequest {text (1-5000), voice_id, engine?, language, output_format, speed 0.5-2,
  pitch 0.5-2}: WAV (24 kHz mono s16) with X-Node-Id and X-Response-Time; a voice it lacks -> 500
  {"detail":"Voice not found: <id>"}; a body that does not validate -> 500 {"detail": "<validation error>"} (the
  validation runs inside the handler's try, as in the real worker);
- GET /health (HealthCheck: healthy when ready, else degraded), GET /info (NodeInfo), GET /metrics (NodeMetrics).
The real workers have no call to delete a voice.

Test controls (Python only): kill() (dies without unregistering), restart(empty=True) (same port and node id,
voices gone unless empty=False, registers again in standby), fail_next(status, detail, count), requests (what was
received: (method, path, fields)), voices, heartbeats.
"""
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

try:
    from . import audio_gen as ag
    from .engines import parse_multipart, Upload
except ImportError:  # run as a plain script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fakes import audio_gen as ag
    from fakes.engines import parse_multipart, Upload

ENGINES = ("xtts", "openvoice", "gpt-sovits")
RATE = 24000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Seed2Worker:
    def __init__(self, gateway_url, engine="xtts", node_id=None, host="127.0.0.1", port=0,
                 heartbeat_interval=0.3, register=True):
        assert engine in ENGINES
        self.gateway = gateway_url.rstrip("/") if gateway_url else None
        self.engine = engine
        self.node_id = node_id or f"{engine}-{uuid.uuid4().hex[:8]}"
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.auto_register = register
        self.lock = threading.Lock()
        self.requests = []
        self.voices = {}  # voice_id -> {"name", "audio", "reference_text"}
        self.heartbeats = 0
        self.registrations = 0
        self.faults = []  # [status, detail, count]
        self._reset_state()
        self.server = None
        self._hb_stop = threading.Event()
        self._hb = None

    def _reset_state(self):
        self.status = "standby"
        self.model_loaded = False
        self.started = time.time()
        self.request_count = 0
        self.error_count = 0
        self.current = 0

    # ---- lifecycle ----
    def start(self):
        handler = type("H", (_Handler,), {"worker": self})
        self.server = _Server((self.host, self.port), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        if self.gateway:
            if self.auto_register:
                self.register()
            self._hb_stop.clear()
            self._hb = threading.Thread(target=self._heartbeat_loop, daemon=True)
            self._hb.start()
        return self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def register(self):
        try:
            r = requests.post(self.gateway + "/api/nodes/register", json=self.node_info(), timeout=10)
            with self.lock:
                self.registrations += 1
            return r
        except requests.RequestException:
            return None

    def unregister(self):
        try:
            return requests.delete(f"{self.gateway}/api/nodes/{self.node_id}", timeout=10)
        except requests.RequestException:
            return None

    def _heartbeat_loop(self):
        while not self._hb_stop.wait(self.heartbeat_interval):
            try:
                requests.post(f"{self.gateway}/api/nodes/{self.node_id}/heartbeat", json=self.metrics(), timeout=5)
                with self.lock:
                    self.heartbeats += 1
            except requests.RequestException:
                pass

    def _halt(self):
        self._hb_stop.set()
        if self._hb is not None:
            self._hb.join(5)
            self._hb = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stop(self):
        """A clean stop, as BaseWorker.stop: heartbeats end, the model goes, the node unregisters."""
        if self.server is None:
            return
        self._hb_stop.set()
        self.model_loaded = False
        if self.gateway:
            self.unregister()
        self.status = "offline"
        self._halt()

    def kill(self):
        """Dies without a word to the gateway."""
        self._halt()

    def restart(self, empty=True):
        """The same node (port, id) comes back: voices lost unless empty=False; standby; registers again."""
        self._halt()
        with self.lock:
            if empty:
                self.voices.clear()
        self._reset_state()
        return self.start()

    def fail_next(self, status, detail, count=1):
        with self.lock:
            self.faults.append([status, detail, count])

    def calls(self, path):
        with self.lock:
            return [r for r in self.requests if r[1] == path]

    # ---- the models' shapes ----
    def node_info(self):
        now = time.time()
        return {"node_id": self.node_id, "engine_type": self.engine, "host": self.host, "port": self.port,
                "status": self.status, "model_loaded": self.model_loaded, "registered_at": now,
                "last_heartbeat": now, "cpu_percent": 3.5, "memory_percent": 41.0, "gpu_percent": 0.0,
                "gpu_memory_percent": 0.0, "request_count": self.request_count, "error_count": self.error_count,
                "avg_response_time": 0.0, "current_concurrent": self.current}

    def metrics(self):
        return {"node_id": self.node_id, "timestamp": time.time(), "cpu_percent": 3.5, "memory_percent": 41.0,
                "memory_used_mb": 512.0, "gpu_percent": 0.0, "gpu_memory_percent": 0.0, "gpu_memory_used_mb": 0.0,
                "status": self.status, "current_concurrent": self.current, "queue_size": 0,
                "request_count": self.request_count, "error_count": self.error_count, "avg_response_time_ms": 0.0}

    def _fault(self):
        with self.lock:
            if not self.faults:
                return None
            f = self.faults[0]
            f[2] -= 1
            if f[2] <= 0:
                self.faults.pop(0)
            return f[0], f[1]


def _validate(data):
    """SynthesizeRequest's checks; the pydantic message when they fail, else None."""
    if not isinstance(data, dict):
        return "1 validation error for SynthesizeRequest\n  Input should be a valid dictionary"
    t = data.get("text")
    if not isinstance(t, str) or not 1 <= len(t) <= 5000:
        return "1 validation error for SynthesizeRequest\ntext\n  String should have between 1 and 5000 characters"
    if not isinstance(data.get("voice_id"), str):
        return "1 validation error for SynthesizeRequest\nvoice_id\n  Field required"
    e = data.get("engine")
    if e is not None and e not in ENGINES:
        return "1 validation error for SynthesizeRequest\nengine\n  Input should be 'xtts', 'openvoice' or 'gpt-sovits'"
    for k in ("speed", "pitch"):
        v = data.get(k, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.5 <= v <= 2.0:
            return f"1 validation error for SynthesizeRequest\n{k}\n  Input should be between 0.5 and 2.0"
    for k in ("language", "output_format"):
        if k in data and not isinstance(data[k], str):
            return f"1 validation error for SynthesizeRequest\n{k}\n  Input should be a valid string"
    return None


class _Handler(BaseHTTPRequestHandler):
    worker = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status, body, ctype="application/json", headers=()):
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        w = self.worker
        if self.path == "/health":
            ready = w.status == "ready"
            self._send(200, {"status": "healthy" if ready else "degraded", "version": "3.0.0",
                             "uptime_seconds": time.time() - w.started, "timestamp": time.time(),
                             "components": {"model": {"status": "loaded" if w.model_loaded else "not_loaded",
                                                      "engine": w.engine}}})
        elif self.path == "/info":
            self._send(200, w.node_info())
        elif self.path == "/metrics":
            self._send(200, w.metrics())
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        w = self.worker
        raw = self._body()
        if self.path == "/command":
            try:
                cmd = str(json.loads(raw)["command"]).lower()
            except (ValueError, KeyError, TypeError):
                self._send(422, {"detail": [{"type": "missing", "loc": ["body", "command"], "msg": "Field required"}]})
                return
            with w.lock:
                w.requests.append(("POST", "/command", {"command": cmd}))
            if cmd in ("activate", "load_model"):
                w.model_loaded, w.status = True, "ready"
                self._send(200, {"success": True, "status": w.status})
            elif cmd in ("standby", "unload_model"):
                w.model_loaded, w.status = False, "standby"
                self._send(200, {"success": True, "status": w.status})
            elif cmd == "stop":
                w._hb_stop.set()
                w.model_loaded = False
                if w.gateway:
                    threading.Thread(target=w.unregister, daemon=True).start()
                w.status = "offline"
                self._send(200, {"success": True, "status": w.status})
            else:
                self._send(200, {"success": False, "error": f"Unknown command: {cmd}"})
            return
        if self.path == "/synthesize":
            self._synthesize(raw)
            return
        if self.path == "/extract_voice":
            self._extract(raw)
            return
        self._send(404, {"detail": "Not Found"})

    def _synthesize(self, raw):
        w = self.worker
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        with w.lock:
            w.requests.append(("POST", "/synthesize", data))
        if not w.model_loaded:
            self._send(503, {"detail": "Model not loaded"})
            return
        f = w._fault()
        if f:
            w.error_count += 1
            self._send(f[0], {"detail": f[1]})
            return
        if data is None:
            w.error_count += 1
            self._send(500, {"detail": "Expecting value: line 1 column 1 (char 0)"})
            return
        bad = _validate(data)
        if bad:
            w.error_count += 1
            self._send(500, {"detail": bad})
            return
        with w.lock:
            has = data["voice_id"] in w.voices
        if not has:
            w.error_count += 1
            self._send(500, {"detail": f"Voice not found: {data['voice_id']}"})
            return
        t0 = time.time()
        pcm = ag.pcm(data["text"], data["voice_id"], RATE, speed=float(data.get("speed", 1.0)))
        w.request_count += 1
        self._send(200, ag.wav(pcm, RATE), "audio/wav",
                   (("X-Response-Time", "%.2fms" % ((time.time() - t0) * 1000)), ("X-Node-Id", w.node_id)))

    def _extract(self, raw):
        w = self.worker
        form = parse_multipart(raw, self.headers.get("Content-Type")) or {}
        fields = {k: (v.data if isinstance(v, Upload) else v) for k, v in form.items()}
        with w.lock:
            w.requests.append(("POST", "/extract_voice", {k: (len(v) if isinstance(v, bytes) else v)
                                                          for k, v in fields.items()}))
        if not w.model_loaded:
            self._send(503, {"detail": "Model not loaded"})
            return
        f = w._fault()
        if f:
            self._send(f[0], {"detail": f[1]})
            return
        audio = form.get("audio")
        if not isinstance(audio, Upload) or not audio.data:
            w.error_count += 1
            self._send(500, {"detail": "400: Missing audio file"})
            return
        vid = form.get("voice_id") or uuid.uuid4().hex[:8]
        name = form.get("voice_name") or vid
        with w.lock:
            w.voices[vid] = {"name": name, "audio": audio.data, "reference_text": form.get("reference_text", "")}
        w.request_count += 1
        self._send(200, {"success": True, "message": "", "voice_id": vid, "voice_name": name, "engine": w.engine})
