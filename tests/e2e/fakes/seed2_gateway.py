"""A faithful fake of the seed-2 gateway (voice-clone-tts, public repository githubstudycloud/gi005:
src/gateway/app.py, src/gateway/registry.py, src/common/models.py), for `ttshub worker` sitting behind it.

What it does as the real one does:
- Request bodies are validated like FastAPI + pydantic v2: a missing required field, a value outside an enum
  (EngineType xtts|openvoice|gpt-sovits, WorkerStatus standby|loading|ready|busy|error|offline) or a number out
  of range is 422 {"detail":[{"type","loc":["body",field],"msg","input"}]}. Unknown fields are ignored.
- POST /api/nodes/register (NodeInfo: node_id defaults to 8 characters of a uuid4; engine_type, host, port
  required) stores the node under node_id, replacing it, and answers {"success":true,"node_id"}. Nothing else:
  no heartbeat interval.
- POST /api/nodes/{id}/heartbeat (NodeMetrics: node_id required in the body too) answers {"success":false}
  with HTTP 200 for a node it does not know; otherwise it copies the metrics and the status, never
  model_loaded (NodeMetrics has no such field).
- DELETE /api/nodes/{id} -> {"success": known}. GET /api/nodes, GET /api/nodes/{id} (404 {"detail":"Node not
  found"}). POST /api/nodes/{id}/command relays {command, params} to http://{host}:{port}/command and answers
  {"success": node answered 200}.
- Node selection: round robin over the nodes of the engine that are available (status "ready" and
  model_loaded), with one counter per engine, as ServiceRegistry.select_node.
- POST /api/synthesize (SynthesizeRequest: text 1-5000, voice_id required, engine, language "zh",
  output_format "wav", speed and pitch 0.5-2.0; engine defaults to xtts) forwards model_dump() as JSON to
  http://{host}:{port}/synthesize and answers the node's bytes as audio/wav with X-Node-Id and X-Engine. Every
  failure is HTTP 200 {"success":false,"message",...} (no node: "No available node for engine xtts"; a node's
  non-200: "Node error: <its body>").
- POST /api/extract_voice (multipart audio, voice_id?, voice_name, engine?) forwards audio, voice_id ("" when
  absent) and voice_name to ONE round-robin node's /extract_voice and answers ExtractVoiceResponse built from
  the node's JSON (a field of the wrong type is a validation error, answered as HTTP 200 success:false).
- POST /api/batch_synthesize {texts, voice_id, engine?, language} sends each text as {text, voice_id,
  language} (nothing else: no format, speed or pitch) to a round-robin node, one after another, and answers
  {success, message, results:[{index, success, size|error}], total, succeeded, failed}.
- A health check every heartbeat_interval marks nodes silent for dead_threshold as "offline" (they stay
  listed; a later heartbeat with status "ready" brings them back).
Not modelled: the rate limiter (its 100 requests/min per IP would throttle the fast heartbeats the tests use),
the pages, the WebSocket and announcements.

    g = Seed2Gateway().start(); g.url; g.calls; g.nodes; g.forget(); g.stop()
"""
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from fakes.engines import parse_multipart
except ImportError:  # run from tests/e2e/fakes
    from engines import parse_multipart

ENGINES = ("xtts", "openvoice", "gpt-sovits")
STATUSES = ("standby", "loading", "ready", "busy", "error", "offline")


class Invalid(Exception):
    def __init__(self, errors):
        super().__init__("validation")
        self.errors = errors


def _err(kind, field, msg, value):
    return {"type": kind, "loc": ["body", field], "msg": msg, "input": value}


def _validate(body, spec):
    """spec: field -> (kind, default|REQUIRED, extra). Returns the model's dict (defaults filled) or raises."""
    if not isinstance(body, dict):
        raise Invalid([{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a valid dictionary",
                        "input": body}])
    out, errors = {}, []
    for field, (kind, default, extra) in spec.items():
        if field not in body:
            if default is REQUIRED:
                errors.append(_err("missing", field, "Field required", None))
            else:
                out[field] = default() if callable(default) else default
            continue
        v = body[field]
        if kind == "str":
            if not isinstance(v, str):
                errors.append(_err("string_type", field, "Input should be a valid string", v))
            elif extra and not (extra[0] <= len(v) <= extra[1]):
                errors.append(_err("string_too_short" if len(v) < extra[0] else "string_too_long", field,
                                   f"String should have between {extra[0]} and {extra[1]} characters", v))
        elif kind == "opt_enum":
            if v is not None and v not in extra:
                errors.append(_err("enum", field, "Input should be " + ", ".join(f"'{e}'" for e in extra), v))
        elif kind == "enum":
            if v not in extra:
                errors.append(_err("enum", field, "Input should be " + ", ".join(f"'{e}'" for e in extra), v))
        elif kind == "int":
            if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())):
                errors.append(_err("int_parsing", field, "Input should be a valid integer", v))
            else:
                v = int(v)
        elif kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                errors.append(_err("float_parsing", field, "Input should be a valid number", v))
            elif extra and not (extra[0] <= v <= extra[1]):
                errors.append(_err("less_than_equal" if v > extra[1] else "greater_than_equal", field,
                                   f"Input should be between {extra[0]} and {extra[1]}", v))
        elif kind == "bool":
            if not isinstance(v, bool) and v not in (0, 1, "true", "false"):
                errors.append(_err("bool_parsing", field, "Input should be a valid boolean", v))
            else:
                v = v in (True, 1, "true")
        out[field] = v
    if errors:
        raise Invalid(errors)
    return out


REQUIRED = object()
NODE_INFO = {
    "node_id": ("str", lambda: str(uuid.uuid4())[:8], None),
    "engine_type": ("enum", REQUIRED, ENGINES),
    "host": ("str", REQUIRED, None),
    "port": ("int", REQUIRED, None),
    "status": ("enum", "offline", STATUSES),
    "model_loaded": ("bool", False, None),
    "cpu_percent": ("float", 0.0, None),
    "memory_percent": ("float", 0.0, None),
    "gpu_percent": ("float", 0.0, None),
    "gpu_memory_percent": ("float", 0.0, None),
    "request_count": ("int", 0, None),
    "error_count": ("int", 0, None),
    "avg_response_time": ("float", 0.0, None),
    "current_concurrent": ("int", 0, None),
}
NODE_METRICS = {
    "node_id": ("str", REQUIRED, None),
    "status": ("enum", "offline", STATUSES),
    "cpu_percent": ("float", 0.0, None),
    "memory_percent": ("float", 0.0, None),
    "gpu_percent": ("float", 0.0, None),
    "gpu_memory_percent": ("float", 0.0, None),
    "current_concurrent": ("int", 0, None),
    "queue_size": ("int", 0, None),
    "request_count": ("int", 0, None),
    "error_count": ("int", 0, None),
    "avg_response_time_ms": ("float", 0.0, None),
}
NODE_COMMAND = {"command": ("str", REQUIRED, None), "params": ("any", dict, None)}
SYNTH_REQUEST = {
    "text": ("str", REQUIRED, (1, 5000)),
    "voice_id": ("str", REQUIRED, None),
    "engine": ("opt_enum", None, ENGINES),
    "language": ("str", "zh", None),
    "output_format": ("str", "wav", None),
    "speed": ("float", 1.0, (0.5, 2.0)),
    "pitch": ("float", 1.0, (0.5, 2.0)),
}

BATCH_REQUEST = {
    "texts": ("any", REQUIRED, None),
    "voice_id": ("str", REQUIRED, None),
    "engine": ("opt_enum", None, ENGINES),
    "language": ("str", "zh", None),
}


def _synth_response(message):
    return {"success": False, "message": message, "audio_url": None, "audio_size": 0, "duration_ms": 0.0,
            "engine_used": None, "node_used": None}


class Seed2Gateway:
    def __init__(self, heartbeat_interval=10, dead_threshold=30, default_engine="xtts", port=0):
        self.heartbeat_interval, self.dead_threshold = heartbeat_interval, dead_threshold
        self.default_engine = default_engine
        self.nodes = {}  # node_id -> NodeInfo dict (plus registered_at, last_heartbeat)
        self.engine_index = {e: [] for e in ENGINES}
        self.rr = {e: 0 for e in ENGINES}
        self.calls = []  # (method, path, json body or None, time)
        self.lock = threading.RLock()
        self.port = port
        self.srv = None
        self._stop = threading.Event()

    # ---- registry (ServiceRegistry) ----
    def register(self, node):
        now = time.time()
        node["registered_at"] = node["last_heartbeat"] = now
        nid = node["node_id"]
        self.nodes[nid] = node
        if nid not in self.engine_index[node["engine_type"]]:
            self.engine_index[node["engine_type"]].append(nid)
        return nid

    def unregister(self, nid):
        node = self.nodes.pop(nid, None)
        if node is None:
            return False
        if nid in self.engine_index[node["engine_type"]]:
            self.engine_index[node["engine_type"]].remove(nid)
        return True

    def heartbeat(self, nid, m):
        node = self.nodes.get(nid)
        if node is None:
            return False
        node["last_heartbeat"] = time.time()
        for k in ("cpu_percent", "memory_percent", "gpu_percent", "gpu_memory_percent", "current_concurrent",
                  "request_count", "error_count"):
            node[k] = m[k]
        node["avg_response_time"] = m["avg_response_time_ms"]
        node["status"] = m["status"]
        return True

    def available(self, engine):
        return [n for n in self.nodes.values()
                if n["engine_type"] == engine and n["status"] == "ready" and n["model_loaded"]]

    def select_node(self, engine):
        avail = self.available(engine)
        if not avail:
            return None
        c = self.rr[engine]
        node = avail[c % len(avail)]
        self.rr[engine] = (c + 1) % len(avail)
        return node

    def forget(self, nid=None):
        """The gateway restarted (nid None) or lost one node."""
        with self.lock:
            for k in [nid] if nid else list(self.nodes):
                self.unregister(k)

    def node(self, nid):
        with self.lock:
            n = self.nodes.get(nid)
            return dict(n) if n else None

    def of(self, method, suffix):
        with self.lock:
            return [c for c in self.calls if c[0] == method and c[1].endswith(suffix)]

    # ---- server ----
    def start(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body, ctype="application/json", headers=None):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _json(self, raw):
                try:
                    return json.loads(raw)
                except ValueError:
                    raise Invalid([{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
                                    "input": {}}])

            def do_GET(self):
                self._body()
                with outer.lock:
                    outer.calls.append(("GET", self.path, None, time.time()))
                    m = re.fullmatch(r"/api/nodes/([^/?]+)", self.path)
                    if self.path.split("?")[0] == "/api/nodes":
                        return self._send(200, {"nodes": [dict(n) for n in outer.nodes.values()]})
                    if m:
                        n = outer.nodes.get(m.group(1))
                        return self._send(200, dict(n)) if n else self._send(404, {"detail": "Node not found"})
                    if self.path in ("/health", "/api/health"):
                        ready = sum(1 for n in outer.nodes.values() if n["status"] == "ready" and n["model_loaded"])
                        online = sum(1 for n in outer.nodes.values() if n["status"] != "offline")
                        st = "healthy" if ready else ("degraded" if online else "unhealthy")
                        return self._send(200, {"status": st, "version": "3.2.3", "uptime_seconds": 0.0,
                                                "timestamp": time.time(), "components": {}})
                self._send(404, {"detail": "Not Found"})

            def do_DELETE(self):
                self._body()
                m = re.fullmatch(r"/api/nodes/([^/?]+)", self.path)
                with outer.lock:
                    outer.calls.append(("DELETE", self.path, None, time.time()))
                    if not m:
                        return self._send(404, {"detail": "Not Found"})
                    return self._send(200, {"success": outer.unregister(m.group(1))})

            def do_POST(self):
                raw = self._body()
                try:
                    self._post(raw)
                except Invalid as e:
                    self._send(422, {"detail": e.errors})

            def _post(self, raw):
                path = self.path.split("?")[0]
                ctype = self.headers.get("Content-Type", "")
                body = None
                if "json" in ctype or (raw[:1] == b"{"):
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                with outer.lock:
                    outer.calls.append(("POST", path, body, time.time()))
                if path == "/api/nodes/register":
                    node = _validate(self._json(raw), NODE_INFO)
                    with outer.lock:
                        nid = outer.register(node)
                    return self._send(200, {"success": True, "node_id": nid})
                m = re.fullmatch(r"/api/nodes/([^/]+)/heartbeat", path)
                if m:
                    metrics = _validate(self._json(raw), NODE_METRICS)
                    with outer.lock:
                        ok = outer.heartbeat(m.group(1), metrics)
                    return self._send(200, {"success": ok})
                m = re.fullmatch(r"/api/nodes/([^/]+)/command", path)
                if m:
                    cmd = _validate(self._json(raw), NODE_COMMAND)
                    with outer.lock:
                        node = outer.nodes.get(m.group(1))
                    if node is None:
                        return self._send(404, {"detail": "Node not found"})
                    try:
                        st, _, _ = _forward(node, "/command", json.dumps(cmd).encode(), "application/json", 30)
                        ok = st == 200
                    except OSError:
                        ok = False
                    return self._send(200, {"success": ok})
                if path == "/api/synthesize":
                    return self._synthesize(self._json(raw))
                if path == "/api/extract_voice":
                    return self._extract(raw, ctype)
                if path == "/api/batch_synthesize":
                    return self._batch(self._json(raw))
                self._send(404, {"detail": "Not Found"})

            def _batch(self, body):
                req = _validate(body, BATCH_REQUEST)
                if not isinstance(req["texts"], list) or not all(isinstance(t, str) for t in req["texts"]):
                    raise Invalid([_err("list_type", "texts", "Input should be a valid list", req["texts"])])
                results, ok = [], 0
                for i, text in enumerate(req["texts"]):
                    engine = req["engine"] or outer.default_engine
                    with outer.lock:
                        node = outer.select_node(engine)
                    if node is None:
                        results.append({"index": i, "success": False, "error": f"No available node for engine {engine}"})
                        continue
                    one = {"text": text, "voice_id": req["voice_id"], "language": req["language"]}
                    try:
                        st, data, _ = _forward(node, "/synthesize", json.dumps(one).encode(), "application/json", 60)
                    except OSError as e:
                        results.append({"index": i, "success": False, "error": str(e)})
                        continue
                    if st == 200:
                        results.append({"index": i, "success": True, "size": len(data)})
                        ok += 1
                    else:
                        results.append({"index": i, "success": False, "error": data.decode("utf-8", "replace")})
                n = len(req["texts"])
                self._send(200, {"success": ok == n, "message": f"Batch completed: {ok}/{n}", "results": results,
                                 "total": n, "succeeded": ok, "failed": n - ok})

            def _synthesize(self, body):
                req = _validate(body, SYNTH_REQUEST)
                engine = req["engine"] or outer.default_engine
                with outer.lock:
                    node = outer.select_node(engine)
                if node is None:
                    return self._send(200, _synth_response(f"No available node for engine {engine}"))
                req["engine"] = req["engine"]  # model_dump(): the enum's value, or None
                try:
                    st, data, _ = _forward(node, "/synthesize", json.dumps(req).encode(), "application/json", 60)
                except OSError as e:
                    return self._send(200, _synth_response(str(e)))
                if st != 200:
                    return self._send(200, _synth_response("Node error: " + data.decode("utf-8", "replace")))
                self._send(200, data, "audio/wav", {"X-Node-Id": node["node_id"], "X-Engine": engine})

            def _extract(self, raw, ctype):
                fields = parse_multipart(raw, ctype) or {}
                audio = fields.get("audio")
                if audio is None or isinstance(audio, str):
                    raise Invalid([_err("missing", "audio", "Field required", None)])
                engine = fields.get("engine") or outer.default_engine
                fail = {"success": False, "message": "", "voice_id": "", "voice_name": "", "engine": ""}
                if engine not in ENGINES:
                    return self._send(200, dict(fail, message=f"'{engine}' is not a valid EngineType"))
                with outer.lock:
                    node = outer.select_node(engine)
                if node is None:
                    return self._send(200, dict(fail, message=f"No available node for engine {engine}"))
                boundary = "seed2fake" + uuid.uuid4().hex
                parts = []
                for name, value in (("voice_id", fields.get("voice_id") or ""),
                                    ("voice_name", fields.get("voice_name") or "")):
                    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                                 f"{value}\r\n".encode())
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; '
                             f'filename="{audio.filename}"\r\nContent-Type: {audio.content_type}\r\n\r\n'.encode()
                             + audio.data + b"\r\n")
                parts.append(f"--{boundary}--\r\n".encode())
                try:
                    st, data, _ = _forward(node, "/extract_voice", b"".join(parts),
                                           f"multipart/form-data; boundary={boundary}", 120)
                except OSError as e:
                    return self._send(200, dict(fail, message=str(e)))
                if st != 200:
                    return self._send(200, dict(fail, message="Node error: " + data.decode("utf-8", "replace")))
                try:
                    r = json.loads(data)
                    out = {"success": r["success"], "message": r.get("message", ""),
                           "voice_id": r.get("voice_id", ""), "voice_name": r.get("voice_name", ""),
                           "engine": r.get("engine", "")}
                    if not isinstance(out["success"], bool) or not all(
                            isinstance(out[k], str) for k in ("message", "voice_id", "voice_name", "engine")):
                        raise ValueError("1 validation error for ExtractVoiceResponse")
                except (ValueError, KeyError, TypeError) as e:
                    return self._send(200, dict(fail, message=str(e)))
                self._send(200, out)

        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        threading.Thread(target=self._health_loop, daemon=True).start()
        return self

    def _health_loop(self):
        while not self._stop.wait(self.heartbeat_interval):
            now = time.time()
            with self.lock:
                for n in self.nodes.values():
                    if now - n["last_heartbeat"] > self.dead_threshold and n["status"] != "offline":
                        n["status"] = "offline"

    def stop(self):
        self._stop.set()
        if self.srv:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None

    def __enter__(self):
        return self.start() if self.srv is None else self

    def __exit__(self, *a):
        self.stop()


def _forward(node, path, body, ctype, timeout):
    """POST to http://{host}:{port}{path} as httpx does; (status, body, headers). OSError when unreachable."""
    url = f"http://{node['host']}:{node['port']}{path}"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
