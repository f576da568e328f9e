"""The voice-clone gateway's client shapes: what its scripts read, field by field, beside ttshub's own."""
import hashlib
import time

from conftest import wait_until

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
