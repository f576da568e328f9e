"""The voice-clone gateway's client shapes: what its scripts read, field by field, beside ttshub's own."""
import array
import base64
import hashlib
import statistics
import subprocess
import time

import requests

from audio import probe
from conftest import free_port, wait_until

ADMIN_KEY = "adm-" + "e" * 28


def admin_cfg():
    return ("auth:\n  mode: api_key\n  keys:\n"
            f"    - {{ id: a, sha256: \"{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}\", role: admin }}\n")


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_status_carries_the_flat_system_status_keys(hub_factory):
    h = hub_factory()
    for i in range(3):
        assert h.post(data={"input": f"flat status {i}", "voice": "alloy"}).status_code == 200
    s = h.get("/api/status").json()
    # SystemStatus: online_nodes, total_nodes, total_requests, current_concurrent, avg_response_time_ms, engines
    assert s["online_nodes"] == 0 and s["total_nodes"] == 0
    assert s["total_requests"] == s["requests"]["total"] and s["total_requests"] >= 3
    assert s["current_concurrent"] == s["requests"]["in_flight"] == 0
    assert isinstance(s["avg_response_time_ms"], float)
    assert s["avg_response_time_ms"] == s["latency_ms"]["avg"] and s["avg_response_time_ms"] > 0
    assert isinstance(s["engines"], dict) and s["engines"]["espeak"]["providers"] == 1
    assert isinstance(s["announcements"], list)
    # ttshub's own document is still whole
    assert s["status"] == "healthy" and s["nodes"] == {"total": 0, "online": 0, "offline": 0}


def test_status_before_any_request(hub_factory):
    s = hub_factory().get("/api/status").json()
    # no synthesis yet: no latency samples (the harness's readiness polls count as requests)
    assert s["latency_ms"]["samples"] == 0 and s["avg_response_time_ms"] == 0.0
    assert s["total_requests"] == s["requests"]["total"] and s["current_concurrent"] == 0


def test_announcement_in_the_gateway_shape(hub_factory):
    h = hub_factory(admin_cfg())
    exp = time.time() + 3600
    r = h.post("/api/announcements", headers=ADMIN,
               json={"type": "maintenance", "title": "Upgrade", "message": "down at 22:00", "expires_at": exp})
    assert r.status_code == 201, r.text
    a = r.json()
    # the gateway's reply {success, id} and ours in one
    assert a["success"] is True and a["id"]
    assert a["type"] == "maintenance" and a["title"] == "Upgrade" and a["message"] == "down at 22:00"
    assert a["level"] == "warning" and a["expires_at"].startswith(time.strftime("%Y-", time.gmtime(exp)))
    listed = h.get("/api/announcements").json()["announcements"]
    assert [x["id"] for x in listed] == [a["id"]] and "success" not in listed[0]
    assert listed[0]["type"] == "maintenance" and listed[0]["title"] == "Upgrade"
    # each type maps onto a level; our own level still works and gets a type
    for typ, level in (("info", "info"), ("warning", "warning"), ("error", "critical")):
        x = h.post("/api/announcements", headers=ADMIN, json={"type": typ, "title": "", "message": typ}).json()
        assert x["type"] == typ and x["level"] == level, x
    x = h.post("/api/announcements", headers=ADMIN, json={"message": "ours", "level": "critical"}).json()
    assert x["level"] == "critical" and x["type"] == "error" and "title" not in x
    # bad shapes are 400, each with a message
    for bad in ({"type": "loud", "message": "m"}, {"type": 3, "message": "m"}, {"title": 5, "message": "m"},
                {"title": "t" * 201, "message": "m"}, {"message": "m", "expires_at": time.time() - 10},
                {"message": "m", "expires_at": "tomorrow"}, {"message": "m", "expires_at": time.time() + 86400 * 40},
                {"message": "m", "expires_at": time.time() + 60, "ttl_seconds": 60}):
        r = h.post("/api/announcements", headers=ADMIN, json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_announcement", (bad, r.text)


def test_announcement_expires_at_its_time(hub_factory):
    h = hub_factory(admin_cfg())
    short = h.post("/api/announcements", headers=ADMIN,
                   json={"type": "info", "title": "t", "message": "soon gone", "expires_at": time.time() + 1.5})
    assert short.status_code == 201, short.text
    ids = lambda: [x["id"] for x in h.get("/api/announcements").json()["announcements"]]  # noqa: E731
    assert ids() == [short.json()["id"]]
    assert wait_until(lambda: ids() == [], timeout=10), ids()


def test_rate_limit_carries_the_gateway_code(hub_factory):
    h = hub_factory("rate_limit: { global_rpm: 1, ip_rpm: 0, concurrency: 0 }\n")
    assert h.post(data={"input": "first", "voice": "alloy"}).status_code == 200
    r = h.post(data={"input": "second", "voice": "alloy"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] and body["error"]["message"]
    r = h.post("/v1/audio/speech", json={"model": "tts-1", "input": "third", "voice": "alloy"})
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMIT_EXCEEDED"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_other_errors_carry_no_gateway_code(hub_factory):
    h = hub_factory()
    r = h.post(data={"input": "x", "voice": "no-such-voice"})
    assert r.status_code == 400 and "code" not in r.json() and r.json()["error"]["type"] == "invalid_request_error"


# ---- pitch: SynthesizeRequest.pitch is a ratio 0.5..2.0 (1.0 = the voice's own) ----

def median_f0(wav_bytes):
    """The median fundamental frequency (Hz) of the loud 40 ms frames, by autocorrelation at 8 kHz."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "s16le", "-ac", "1", "-ar", "8000", "-"],
                         input=wav_bytes, capture_output=True, check=True).stdout
    s, rate, n = array.array("h", pcm), 8000, 320
    est = []
    for i in range(0, len(s) - n, n):
        fr = s[i:i + n]
        if sum(x * x for x in fr) / n < 1000 ** 2:
            continue
        lag = max(range(16, 160), key=lambda k: sum(fr[j] * fr[j + k] for j in range(n - k)))
        est.append(rate / lag)
    return statistics.median(est)


PITCH_TEXT = "Pitch goes through the hub to the engine."


def test_pitch_reaches_espeak(hub_factory):
    h = hub_factory()
    say = lambda **kw: h.post("/api/synthesize", json={"text": PITCH_TEXT, "voice_id": "alloy", **kw})  # noqa: E731
    low, same, high = say(pitch=0.5), say(pitch=1.0), say(pitch=2.0)
    for r in (low, same, high):
        assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav", r.text
        assert probe(r.content, "wav")[0]["codec_name"] == "pcm_s16le"
    f_low, f_same, f_high = median_f0(low.content), median_f0(same.content), median_f0(high.content)
    assert f_high > 1.5 * f_low and f_low < f_same < f_high, (f_low, f_same, f_high)
    # the default (no pitch) is the voice's own, and the cached copy of it carries no pitch
    plain = say()
    assert plain.status_code == 200 and abs(median_f0(plain.content) - f_same) < 0.1 * f_same
    again = say(pitch=2.0)  # a pitched request is not answered from the plain one's cache entry
    assert abs(median_f0(again.content) - f_high) < 0.1 * f_high
    # a form post carries it the same way
    r = h.post("/api/synthesize", data={"text": PITCH_TEXT, "voice_id": "alloy", "pitch": "2"})
    assert r.status_code == 200 and abs(median_f0(r.content) - f_high) < 0.1 * f_high
    # outside 0.5..2.0 (FastAPI's 422 there) is our 400 with a message; null is the default
    for bad in (0.4, 2.1, 0, -3, 12, "high", "nan", True):
        r = say(pitch=bad)
        assert r.status_code == 400, (bad, r.text)
        body = r.json()
        assert body["success"] is False and body["code"] == "invalid_pitch" and "0.5" in body["message"], body
    assert say(pitch=None).status_code == 200


def test_pitch_reaches_a_worker_node(hub_factory):
    token = "pitch-cluster-token-42"
    env = {"TTSHUB_CLUSTER_TOKEN": token}
    hub = hub_factory("providers:\n  - { name: pool, type: nodes, engine: espeak }\n"
                      "registry: { heartbeat_interval: 1s, dead_threshold: 5s, remove_after: 10s }\n", env=env)
    port = free_port()
    hub_factory(None, command="worker", env=env, port=port,
                extra_args=["--engine", "espeak", "--gateway", hub.url, "--advertise", f"http://127.0.0.1:{port}",
                            "--node-id", "pw0"])
    auth = {"Authorization": f"Bearer {token}"}
    assert wait_until(lambda: hub.get("/api/nodes", headers=auth).json()["count"] == 1, timeout=15)
    say = lambda p: hub.post("/api/synthesize", json={"text": PITCH_TEXT, "voice_id": "alloy", "pitch": p})  # noqa
    low, high = say(0.5), say(2.0)
    for r in (low, high):
        assert r.status_code == 200, r.text
        assert r.headers["X-Provider"] == "pool"
    assert hub.get("/api/nodes", headers=auth).json()["nodes"][0]["requests"] == 2
    assert median_f0(high.content) > 1.5 * median_f0(low.content)


# ---- what the gateway's pages and README read, endpoint by endpoint ----

def test_health_carries_the_health_check_fields(hub_factory):
    h = hub_factory()
    before = time.time()
    for path in ("/health", "/api/health"):
        d = h.get(path).json()
        # HealthCheck: status, version, uptime_seconds, timestamp, components.registry.{total,online,ready}_nodes
        assert d["status"] in ("healthy", "degraded", "unhealthy") and isinstance(d["version"], str)
        assert isinstance(d["uptime_seconds"], (int, float))
        assert isinstance(d["timestamp"], float) and before - 1 <= d["timestamp"] <= time.time() + 1
        reg = d["components"]["registry"]
        assert reg["total_nodes"] == reg["online_nodes"] == reg["ready_nodes"] == 0
        assert reg["nodes"] == 0 and reg["online"] == 0  # ours beside them
        assert "limiter" in d["components"]


def test_status_engines_carry_total_online_ready(hub_factory):
    token = "s2c-cluster-token-42"
    env = {"TTSHUB_CLUSTER_TOKEN": token}
    h = hub_factory("providers:\n  - { name: local, type: espeak }\n"
                    "  - { name: pool, type: nodes, engine: xtts }\n"
                    "registry: { heartbeat_interval: 1s, dead_threshold: 5s, remove_after: 10s }\n", env=env)
    auth = {"Authorization": f"Bearer {token}"}
    eng = h.get("/api/status").json()["engines"]
    # the status page: info.ready > 0 -> ready; info.online > 0 -> standby; else offline
    assert eng["espeak"]["total"] == 1 and eng["espeak"]["ready"] == 1  # the in-process engine serves
    assert eng["xtts"] == {"nodes": 0, "online": 0, "in_flight": 0, "providers": 1, "total": 0, "ready": 0}
    for i, st in enumerate(("online", "standby")):
        r = h.post("/api/nodes/register", headers=auth,
                   json={"node_id": f"x{i}", "engine_type": "xtts", "url": f"http://127.0.0.1:{free_port()}",
                         "model_loaded": True, "status": st})
        assert r.status_code in (200, 201), r.text
    eng = h.get("/api/status").json()["engines"]["xtts"]
    assert eng["nodes"] == eng["total"] == 2 and eng["online"] == eng["ready"] == 1, eng
    s = h.get("/api/status").json()
    assert s["total_nodes"] == 2 and s["online_nodes"] == 1


def test_node_list_carries_the_node_info_keys(hub_factory):
    token = "s2c-cluster-token-42"
    h = hub_factory("providers:\n  - { name: pool, type: nodes, engine: xtts }\n"
                    "registry: { heartbeat_interval: 1s, dead_threshold: 5s, remove_after: 10s }\n",
                    env={"TTSHUB_CLUSTER_TOKEN": token})
    auth = {"Authorization": f"Bearer {token}"}
    port = free_port()
    for nid, url in (("n1", f"http://127.0.0.1:{port}/base"), ("n6", f"http://[::1]:{port}")):
        r = h.post("/api/nodes/register", headers=auth,
                   json={"node_id": nid, "engine_type": "xtts", "url": url, "model_loaded": True, "status": "online"})
        assert r.status_code in (200, 201), r.text
    r = h.post("/api/nodes/n1/heartbeat", headers=auth,
               json={"status": "online", "model_loaded": True, "cpu_percent": 12.5, "memory_percent": 40.25,
                     "current_concurrent": 3})
    assert r.status_code == 200, r.text
    # the status and admin pages: node_id, engine_type, host + ':' + port, status, cpu_percent.toFixed,
    # memory_percent.toFixed, request_count, current_concurrent, model_loaded
    nodes = {n["node_id"]: n for n in h.get("/api/nodes", headers=auth).json()["nodes"]}
    n1, n6 = nodes["n1"], nodes["n6"]
    assert n1["engine_type"] == "xtts" and n1["host"] == "127.0.0.1" and n1["port"] == port
    assert n1["status"] == "online" and n1["model_loaded"] is True
    assert n1["cpu_percent"] == 12.5 and n1["memory_percent"] == 40.25 and n1["current_concurrent"] == 3
    assert n1["request_count"] == n1["requests"] == 0 and n1["error_count"] == n1["failures"] == 0
    assert n6["host"] == "::1" and n6["port"] == port
    assert isinstance(n6["cpu_percent"], float) and n6["cpu_percent"] == 0.0 and n6["memory_percent"] == 0.0
    assert n6["current_concurrent"] == n6["in_flight"] == 0
    one = h.get("/api/nodes/n1", headers=auth).json()
    assert {k: one[k] for k in ("host", "port", "cpu_percent", "request_count", "current_concurrent")} == \
        {"host": "127.0.0.1", "port": port, "cpu_percent": 12.5, "request_count": 0, "current_concurrent": 3}
    # the gateway's filters ?engine=&status=
    ids = lambda q: sorted(n["node_id"] for n in h.get("/api/nodes" + q, headers=auth).json()["nodes"])  # noqa
    assert ids("?engine=xtts&status=online") == ["n1", "n6"]
    assert ids("?engine=openvoice") == [] and ids("?status=standby") == []


def test_ws_system_status_is_the_system_status_document(hub_factory):
    import asyncio
    import json
    import websockets

    h = hub_factory()

    async def first_status():
        async with websockets.connect(h.url.replace("http://", "ws://") + "/ws") as ws:
            deadline = time.time() + 10
            while time.time() < deadline:
                m = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.time()))
                if m["type"] == "system_status":
                    return m
            raise AssertionError("no system_status")

    m = asyncio.run(first_status())
    # the status page: this.status = msg.data; msg.data.announcements
    d = m["data"]
    for k in ("online_nodes", "total_nodes", "total_requests", "current_concurrent", "avg_response_time_ms",
              "engines", "announcements"):
        assert k in d, k
    assert isinstance(m["timestamp"], (int, float, str))
    assert d["engines"]["espeak"]["ready"] == 1 and d["engines"]["espeak"]["total"] == 1


def test_admin_and_playground_reads(hub_factory):
    h = hub_factory(admin_cfg())
    # admin page: GET /api/nodes -> .nodes; GET /api/announcements -> .announcements; DELETE -> {success}
    assert h.get("/api/nodes", headers=ADMIN).json()["nodes"] == []
    a = h.post("/api/announcements", headers=ADMIN, json={"type": "info", "title": "", "message": "m"}).json()
    r = requests.delete(h.url + f"/api/announcements/{a['id']}", headers=ADMIN, timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True
    assert h.get("/api/announcements").json()["announcements"] == []
    # an unknown one: the gateway said 200 {success:true}; ours is a real 404 with our error body
    r = requests.delete(h.url + "/api/announcements/nope", headers=ADMIN, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_announcement"

    # playground (synthesis open): its default body; the failure text is data.message; success is audio/*
    h = hub_factory()
    body = {"text": "你好，这是一个语音克隆测试。", "voice_id": "default", "engine": "", "language": "zh", "speed": 1.0}
    r = h.post("/api/synthesize", json=body)
    assert r.status_code == 400 and r.json()["success"] is False and "default" in r.json()["message"]
    r = h.post("/api/synthesize", json={**body, "voice_id": "alloy", "speed": "1.5"})
    assert r.status_code == 200 and "audio" in r.headers["Content-Type"] and r.headers["X-Engine"]
    r = h.post("/api/synthesize", json={**body, "voice_id": "alloy", "engine": "xtts"})
    assert r.status_code == 400 and r.json()["success"] is False and r.json()["message"]


def test_batch_carries_the_batch_response_fields(hub_factory):
    h = hub_factory()
    # BatchSynthesizeRequest as the README's scripts send it: texts, voice_id, language
    r = h.post("/api/batch_synthesize", json={"texts": ["One.", "Two, longer."], "voice_id": "alloy", "language": "zh"})
    assert r.status_code == 200, r.text
    b = r.json()
    # BatchSynthesizeResponse: success, message, results[{index, success, size}], total, succeeded, failed
    assert b["success"] is True and b["message"] == "Batch completed: 2/2"
    assert b["total"] == 2 and b["succeeded"] == 2 and b["failed"] == 0
    assert [(x["index"], x["success"]) for x in b["results"]] == [(0, True), (1, True)]
    assert all(x["size"] == len(base64.b64decode(x["audio_base64"])) > 0 for x in b["results"])


def test_extract_voice_carries_the_extract_response_fields(hub_factory):
    from fakes.engines import COSY_SPEAKERS, FakeEngine
    from test_voices import config, extract, make_audio

    cosy = FakeEngine("cosyvoice", speakers=list(COSY_SPEAKERS) + ["s2v"]).start()
    try:
        h = hub_factory(config(cosy))
        # the playground's form: audio, voice_id (optional), voice_name; it reads success, voice_id, message
        r = extract(h, make_audio("wav", 3.0), voice_id="s2v", voice_name="我的音色")
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["success"] is True and d["voice_id"] == "s2v" and d["voice_name"] == "我的音色"
        assert "engine" in d
        r = extract(h, make_audio("wav", 3.0), voice_name="auto id")
        assert r.status_code == 201 and r.json()["success"] is True and r.json()["voice_id"]
        r = extract(h, make_audio("wav", 3.0, silent=True), voice_name="silent")
        assert r.status_code == 400 and r.json()["success"] is False and r.json()["message"]
        # and the voice speaks through /api/synthesize with the playground's body
        r = h.post("/api/synthesize", json={"text": "你好", "voice_id": "s2v", "engine": "", "language": "zh",
                                            "speed": 1.0})
        assert r.status_code == 200 and "audio" in r.headers["Content-Type"], r.text
    finally:
        cosy.stop()


def test_pitch_reaches_a_seed2_worker(hub_factory):
    from fakes.seed2_worker import Seed2Worker
    from test_seed2_workers import activate, config, node, upload

    h = hub_factory(config())
    w = Seed2Worker(h.url, engine="xtts", heartbeat_interval=0.2).start()
    try:
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w)
        upload(h, "pv")
        assert wait_until(lambda: "pv" in w.voices)
        for sent, seen in ((1.5, 1.5), (None, 1.0), (0.5, 0.5)):
            body = {"text": PITCH_TEXT, "voice_id": "pv"}
            if sent is not None:
                body["pitch"] = sent
            r = h.post("/api/synthesize", json=body)
            assert r.status_code == 200, r.text
            assert w.calls("/synthesize")[-1][2]["pitch"] == seen
    finally:
        w.kill()
