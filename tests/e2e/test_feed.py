"""/api/status, announcements and the /ws live feed (real WebSocket clients: Debian's python3-websockets)."""
import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time

import pytest
import requests
import websockets

from conftest import wait_until
from fakes.engines import FakeEngine

ADMIN_KEY = "adm-" + "c" * 28
USER_KEY = "usr-" + "d" * 28


def auth_cfg():
    return ("auth:\n  mode: api_key\n  keys:\n"
            f"    - {{ id: a, sha256: \"{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}\", role: admin }}\n"
            f"    - {{ id: u, sha256: \"{hashlib.sha256(USER_KEY.encode()).hexdigest()}\", role: user }}\n")


def bearer(k):
    return {"Authorization": f"Bearer {k}"}


def ws_url(h):
    return h.url.replace("http://", "ws://") + "/ws"


async def recv_type(ws, want, timeout=10):
    """The next message of that type (others are skipped)."""
    deadline = time.time() + timeout
    while True:
        left = deadline - time.time()
        if left <= 0:
            raise AssertionError(f"no {want} message within {timeout} s")
        m = json.loads(await asyncio.wait_for(ws.recv(), left))
        assert set(m) == {"type", "data", "timestamp"}, m
        if m["type"] == want:
            return m


def run(coro):
    return asyncio.run(coro)


def test_status_document(hub_factory):
    h = hub_factory()
    for i in range(3):
        assert h.post(data={"input": f"status sample {i}", "voice": "alloy"}).status_code == 200
    s = h.get("/api/status").json()
    assert s["status"] == "healthy" and s["version"]
    assert s["requests"]["total"] >= 3 and s["requests"]["in_flight"] == 0 and s["requests"]["characters"] > 0
    lat = s["latency_ms"]
    assert lat["samples"] == 3 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert s["nodes"] == {"total": 0, "online": 0, "offline": 0}
    assert s["engines"]["espeak"]["providers"] == 1
    assert s["providers"]["local"]["breaker"] == "closed"
    assert s["announcements"] == []


def test_announcements(hub_factory):
    h = hub_factory(auth_cfg())
    assert h.get("/api/announcements").json() == {"announcements": [], "count": 0}
    r = h.post("/api/announcements", json={"message": "maintenance at 22:00"})
    assert r.status_code == 401
    r = h.post("/api/announcements", json={"message": "maintenance at 22:00"}, headers=bearer(USER_KEY))
    assert r.status_code == 403
    r = h.post("/api/announcements", json={"message": "maintenance at 22:00 — 維護", "level": "warning"},
               headers=bearer(ADMIN_KEY))
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["message"] == "maintenance at 22:00 — 維護" and a["level"] == "warning" and a["id"] and a["created_at"]
    short = h.post("/api/announcements", json={"message": "short-lived", "ttl_seconds": 1},
                   headers=bearer(ADMIN_KEY)).json()
    assert short["expires_at"]
    lst = h.get("/api/announcements").json()
    assert lst["count"] == 2 and [x["id"] for x in lst["announcements"]] == [a["id"], short["id"]]
    assert h.get("/api/status").json()["announcements"][0]["id"] == a["id"]
    ids = lambda: [x["id"] for x in h.get("/api/announcements").json()["announcements"]]  # noqa: E731
    assert wait_until(lambda: ids() == [a["id"]]), ids()
    for bad in ({}, {"message": ""}, {"message": "x" * 1001}, {"message": "ok", "level": "loud"},
                {"message": "ok", "ttl_seconds": 0}, {"message": "ok", "ttl_seconds": "5"}, {"message": 5}):
        r = h.post("/api/announcements", json=bad, headers=bearer(ADMIN_KEY))
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_announcement", (bad, r.text)
    r = h.post("/api/announcements", data=b"{oops", headers=dict(bearer(ADMIN_KEY), **{"Content-Type": "application/json"}))
    assert r.status_code == 400
    # not JSON: 415 (a cross-site text/plain form post cannot make an announcement)
    r = h.post("/api/announcements", data=b'{"message":"x"}', headers=dict(bearer(ADMIN_KEY), **{"Content-Type": "text/plain"}))
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert requests.delete(f"{h.url}/api/announcements/{a['id']}", timeout=10).status_code == 401
    assert requests.delete(f"{h.url}/api/announcements/{a['id']}", headers=bearer(ADMIN_KEY),
                           timeout=10).status_code == 200
    assert requests.delete(f"{h.url}/api/announcements/{a['id']}", headers=bearer(ADMIN_KEY),
                           timeout=10).status_code == 404
    # bounded: at most 100
    for i in range(100):
        assert h.post("/api/announcements", json={"message": f"n{i}"}, headers=bearer(ADMIN_KEY)).status_code == 201
    r = h.post("/api/announcements", json={"message": "one too many"}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_announcements"


def test_feed_messages(hub_factory):
    h = hub_factory(auth_cfg())

    async def go():
        async with websockets.connect(ws_url(h)) as ws:
            first = await recv_type(ws, "system_status", timeout=5)
            assert first["data"]["status"] == "healthy" and "providers" in first["data"]
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_type(ws, "pong"))["data"] == {}
            assert "ttshub_feed_clients 1\n" in requests.get(h.url + "/metrics", timeout=10).text
            await ws.send(json.dumps({"type": "get_status"}))
            await recv_type(ws, "system_status")
            await ws.send("not json")
            assert "JSON" in (await recv_type(ws, "error"))["data"]["message"]
            await ws.send(json.dumps({"type": "dance"}))
            assert "unknown type" in (await recv_type(ws, "error"))["data"]["message"]
            # pushed every 2 s without asking
            t0 = time.time()
            await recv_type(ws, "system_status", timeout=5)
            # announcements are pushed as they are made
            r = requests.post(h.url + "/api/announcements", json={"message": "hello feed"},
                              headers=bearer(ADMIN_KEY), timeout=10)
            m = await recv_type(ws, "announcement")
            assert m["data"]["action"] == "created" and m["data"]["announcement"]["message"] == "hello feed"
            requests.delete(f"{h.url}/api/announcements/{r.json()['id']}", headers=bearer(ADMIN_KEY), timeout=10)
            m = await recv_type(ws, "announcement")
            assert m["data"] == {"action": "deleted", "id": r.json()["id"]}
            assert time.time() - t0 < 30
    run(go())


def test_feed_node_and_breaker_events(hub_factory):
    f = FakeEngine("openai_fm").start()
    node = FakeEngine("node", engine="xtts").start()
    try:
        cfg = ("providers:\n"
               f"  - {{ name: fm, type: openai_fm, base_url: \"{f.url}\", timeout: 2s, priority: 0 }}\n"
               "  - { name: workers, type: nodes, engine: xtts, priority: 1 }\n"
               "router:\n  strategy: priority\n  retries: 0\n  fallback: false\n"
               "  breaker: { failures: 2, open_for: 1s }\n"
               "cache: { enabled: false }\n"
               "registry: { heartbeat_interval: 1s, dead_threshold: 2s, remove_after: 3s }\n")
        h = hub_factory(cfg)

        async def go():
            async with websockets.connect(ws_url(h)) as ws:
                await recv_type(ws, "system_status")
                r = requests.post(h.url + "/api/nodes/register", timeout=10,
                                  json={"node_id": "w1", "engine_type": "xtts", "url": node.url, "capacity": 2})
                assert r.status_code == 200
                m = await recv_type(ws, "node_online")
                assert m["data"] == {"node_id": "w1", "status": "online"}
                requests.post(h.url + "/api/nodes/w1/heartbeat", json={"status": "busy"}, timeout=10)
                assert (await recv_type(ws, "node_status_changed"))["data"]["status"] == "busy"
                # silent: offline, then removed
                assert (await recv_type(ws, "node_offline", timeout=10))["data"]["node_id"] == "w1"
                assert (await recv_type(ws, "node_removed", timeout=10))["data"]["node_id"] == "w1"
                # the upstream fails: its breaker opens, then half-opens
                f.set_fault("status_500")
                for i in range(2):
                    requests.post(h.url + "/api/generate", data={"input": f"fail {i}", "voice": "alloy"},
                                  timeout=10)
                m = await recv_type(ws, "provider_breaker")
                assert m["data"]["provider"] == "fm" and m["data"]["state"] == "open"
                m = await recv_type(ws, "provider_breaker", timeout=5)
                assert m["data"]["state"] == "half_open" and m["data"]["previous"] == "open"
        run(go())
    finally:
        f.stop()
        node.stop()


def test_feed_bad_handshakes_and_limits(hub_factory):
    h = hub_factory()
    r = h.get("/ws")
    assert r.status_code == 426 and r.json()["error"]["code"] == "upgrade_required"
    hdr = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    r = h.get("/ws", headers=dict(hdr, **{"Sec-WebSocket-Key": "short"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_handshake"
    r = h.get("/ws", headers=dict(hdr, **{"Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "x" * 22 + "=="}))
    assert r.status_code == 426

    async def too_big():
        async with websockets.connect(ws_url(h), max_size=None) as ws:
            await recv_type(ws, "system_status")
            await ws.send("x" * 10000)  # over the 4 KiB limit of a client message
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(20):
                    await asyncio.wait_for(ws.recv(), 5)
    run(too_big())
    # the hub is fine afterwards
    assert h.get("/health").status_code == 200


def masked_frame(opcode, payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def test_frames_sent_with_the_handshake(hub_factory):
    """Bytes that arrive in the same packet as the upgrade request belong to the WebSocket."""
    h = hub_factory()
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    s.sendall(req + masked_frame(0x9, b"hi") + masked_frame(0x1, json.dumps({"type": "ping"}).encode()))
    buf = b""
    deadline = time.time() + 5
    while time.time() < deadline and (b"\x8a\x02hi" not in buf or b'"pong"' not in buf):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head = buf.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 101 ")
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert f"Sec-WebSocket-Accept: {accept.decode()}" in head
    assert b"\x8a\x02hi" in buf  # the ping was answered with a pong frame
    assert b'"pong"' in buf      # and the feed's own ping message too
    # a close frame is answered with a close frame, then the hub closes the connection
    s.sendall(masked_frame(0x8, struct.pack("!H", 1000)))
    rest = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    assert b"\x88\x02\x03\xe8" in rest
    s.close()


def test_sigterm_closes_feed_clients(hub_factory):
    h = hub_factory()

    async def go():
        async with websockets.connect(ws_url(h)) as ws:
            await recv_type(ws, "system_status")
            h.proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as e:
                for _ in range(20):
                    await asyncio.wait_for(ws.recv(), 5)
            return e.value.rcvd.code if e.value.rcvd else None
    code = run(go())
    assert code == 1001
    assert h.proc.wait(10) == 0
