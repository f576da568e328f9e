"""Safe by default: protected mode, JSON-only and same-origin state changes, nodes that cannot be hijacked,
workers that need the cluster token, engine error bodies kept in the log, and per-IP resource caps.

Non-loopback listeners are tested by listening on 0.0.0.0 and connecting through 127.0.0.1. A second client
address is 127.0.0.2 (http.client's source_address), so "another machine" is a real other peer address."""
import hashlib
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from audio import probe
from conftest import Hub, free_port
from fakes.engines import FakeEngine

TOKEN = "security-cluster-token-0123456789"
ADMIN_KEY = "adm-" + "s" * 40
PROTECTED_ROUTES = [
    ("GET", "/admin/config", None),
    ("GET", "/admin/usage", None),
    ("GET", "/admin/providers", None),
    ("POST", "/api/announcements", {"message": "hello"}),
    ("DELETE", "/api/announcements/x", None),
    ("POST", "/api/nodes/register", {"engine_type": "xtts", "url": "http://127.0.0.1:9"}),
    ("POST", "/api/nodes/n1/heartbeat", {"status": "online"}),
    ("POST", "/api/nodes/n1/command", {"command": "stop"}),
    ("DELETE", "/api/nodes/n1", None),
    ("GET", "/api/nodes", None),
    ("GET", "/api/nodes/n1", None),
    ("POST", "/api/register", {"engine_type": "xtts", "url": "http://127.0.0.1:9"}),
    ("POST", "/api/heartbeat", {"node_id": "n1"}),
    ("POST", "/api/unregister", {"node_id": "n1"}),
]


def public_hub(hub_factory, config=None, env=None):
    """A hub listening on 0.0.0.0 (not loopback), reached through 127.0.0.1."""
    port = free_port()
    return hub_factory(config, port=port, extra_args=["--listen", f"0.0.0.0:{port}"], env=env)


def call(h, method, path, body, headers=None):
    return requests.request(method, h.url + path, json=body, headers=headers or {}, timeout=30)


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


def speak(h, text="Protected mode keeps synthesis open."):
    return h.post(data={"input": text, "voice": "alloy", "response_format": "wav"})


# ---- protected mode ----

def test_protected_mode_refuses_every_admin_and_control_route(hub_factory):
    h = public_hub(hub_factory)
    for method, path, body in PROTECTED_ROUTES:
        r = call(h, method, path, body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        text = r.text
        assert "protected_mode" in text, (path, text)
        for how in ("auth.mode", "registry.token_env", "auth.allow_open_admin"):  # says how to open it
            assert how in text, (path, text)
    # synthesis stays open, with the warning in the log
    r = speak(h)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert h.get("/api/status").status_code == 200
    out = h.output()
    assert "anyone who can reach it can use it" in out and "protected mode" in out


def test_protected_mode_opens_with_a_key_a_token_or_the_explicit_switch(hub_factory):
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    keys = f"auth:\n  mode: api_key\n  keys:\n    - {{ id: adm, sha256: \"{digest}\", role: admin }}\n"
    h = public_hub(hub_factory, keys)
    assert call(h, "GET", "/admin/config", None, bearer(ADMIN_KEY)).status_code == 200
    r = call(h, "POST", "/api/announcements", {"message": "keys configured"}, bearer(ADMIN_KEY))
    assert r.status_code == 201 or r.status_code == 200, r.text
    assert call(h, "GET", "/admin/config", None).status_code == 401  # keys: the ordinary 401
    # the cluster token opens admin and control routes of an open hub (mode none)
    h2 = public_hub(hub_factory, env={"TTSHUB_CLUSTER_TOKEN": TOKEN})
    assert call(h2, "GET", "/admin/config", None).status_code == 403
    assert call(h2, "GET", "/admin/config", None, bearer(TOKEN)).status_code == 200
    assert call(h2, "GET", "/api/nodes", None, bearer(TOKEN)).status_code == 200
    assert call(h2, "GET", "/admin/config", None, bearer("not-the-token")).status_code == 403
    # auth.allow_open_admin: true is today's open hub, on purpose
    h3 = public_hub(hub_factory, "auth:\n  allow_open_admin: true\n")
    assert call(h3, "GET", "/admin/config", None).status_code == 200
    assert call(h3, "POST", "/api/announcements", {"message": "open on purpose"}).status_code in (200, 201)
    assert "protected mode:" not in h3.output()


def test_loopback_listener_keeps_the_open_behaviour(hub):
    assert hub.get("/admin/config").status_code == 200
    assert hub.get("/api/nodes").status_code == 200
    r = call(hub, "POST", "/api/announcements", {"message": "loopback"})
    assert r.status_code in (200, 201), r.text


def test_admin_config_redacts_url_secrets(hub_factory):
    h = hub_factory("providers:\n  - name: fm\n    type: openai_fm\n"
                    "    base_url: \"http://user:pw@127.0.0.1:9/x?api_key=SECRETQ\"\n")
    text = h.get("/admin/config").text
    assert "SECRETQ" not in text and "pw@" not in text and "<redacted>" in text


# ---- JSON only, same origin only ----

def test_json_routes_need_json_and_cross_site_posts_are_refused(hub):
    # a text/plain "simple" request (what a cross-site form can send) does not reach a JSON route
    r = requests.post(hub.url + "/api/announcements", data=b'{"message":"x"}',
                      headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = requests.post(hub.url + "/api/nodes/register", data=b'{"engine_type":"xtts"}',
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert r.status_code == 415
    # a page of another origin: 403 on any state-changing route
    evil = {"Origin": "http://evil.example"}
    for method, path, body in (("POST", "/api/announcements", {"message": "x"}),
                               ("POST", "/api/nodes/register", {"engine_type": "xtts", "url": "http://127.0.0.1:9"}),
                               ("DELETE", "/api/announcements/x", None)):
        r = call(hub, method, path, body, evil)
        assert r.status_code == 403 and "cross_site_request" in r.text, (path, r.text)
    r = call(hub, "POST", "/api/announcements", {"message": "x"}, {"Origin": "null"})
    assert r.status_code == 403
    # synthesis changes no state: ttsfm's client sends browser headers with its own Origin, and works
    r = requests.post(hub.url + "/api/generate", data={"input": "x", "voice": "alloy"},
                      headers={"Origin": "https://www.openai.fm"}, timeout=30)
    assert r.status_code == 200
    # the same origin (the pages) is fine, and GETs never check
    same = {"Origin": hub.url}
    assert call(hub, "POST", "/api/announcements", {"message": "same origin"}, same).status_code in (200, 201)
    assert requests.get(hub.url + "/api/status", headers=evil, timeout=10).status_code == 200


# ---- nodes ----

def post_from(h, source_ip, path, body, headers=None, method="POST"):
    """A request from another client address (127.0.0.2 is loopback, but a different peer)."""
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30, source_address=(source_ip, 0))
    data = json.dumps(body).encode() if body is not None else b""
    hd = {"Content-Type": "application/json"}
    hd.update(headers or {})
    conn.request(method, path, body=data, headers=hd)
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"{}")
    conn.close()
    return out


NODE_CFG = ("providers:\n  - name: workers\n    type: nodes\n    engine: xtts\n    strategy: least_load\n"
            "    timeout: 5s\n    concurrency: 16\n"
            "cache: { enabled: false }\n"
            "registry:\n  heartbeat_interval: 5s\n  dead_threshold: 60s\n  remove_after: 120s\n"
            "  trusted_networks: [\"127.0.0.2/32\"]\n  max_capacity: 8\n  max_node_bytes: 2KiB\n")


def test_unspecified_listen_host_is_the_callers_address_but_never_a_url(hub_factory):
    """A seed-2 worker reports its listen address, 0.0.0.0 by default: as host + port it stands for the
    address the registration came from; as a url (which would reach the hub's own machine) it is refused."""
    h = hub_factory(NODE_CFG, env={"TTSHUB_CLUSTER_TOKEN": TOKEN})
    port = free_port()
    st, b = post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "url": f"http://0.0.0.0:{port}"})
    assert st == 400, b
    st, b = post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "host": "0.0.0.0", "port": port})
    assert st == 200, b
    node = requests.get(h.url + f"/api/nodes/{b['node_id']}", headers=bearer(TOKEN), timeout=10).json()
    assert node["url"] == f"http://127.0.0.2:{port}", node


def test_node_hijack_attempts_are_refused(hub_factory):
    h = hub_factory(NODE_CFG, env={"TTSHUB_CLUSTER_TOKEN": TOKEN})
    good = FakeEngine("node", engine="xtts", node_id="good").start()
    attacker = FakeEngine("node", engine="xtts", node_id="attacker").start()
    try:
        st, b = post_from(h, "127.0.0.1", "/api/nodes/register",
                          {"node_id": "n1", "engine_type": "xtts", "url": good.url, "capacity": 4}, bearer(TOKEN))
        assert st == 200 and b["node_id"] == "n1", b
        # the token is required from outside registry.trusted_networks (127.0.0.1 is not in it here)
        st, b = post_from(h, "127.0.0.1", "/api/nodes/register",
                          {"engine_type": "xtts", "url": attacker.url})
        assert st == 401, b
        # re-registering n1: from another address (trusted, no token), or with the token from another address
        for headers in ({}, bearer(TOKEN)):
            st, b = post_from(h, "127.0.0.2", "/api/nodes/register",
                              {"node_id": "n1", "engine_type": "xtts", "url": attacker.url, "capacity": 8}, headers)
            assert st == 403 and b["code"] == "node_owned", b
        # the same node again without its id, with the attacker's credentials: also refused
        st, b = post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "url": good.url})
        assert st == 403, b
        # heartbeats and unregistration of someone else's node
        assert post_from(h, "127.0.0.2", "/api/nodes/n1/heartbeat", {"status": "standby"})[0] == 403
        assert post_from(h, "127.0.0.2", "/api/heartbeat", {"node_id": "n1", "status": "standby"})[0] == 403
        assert post_from(h, "127.0.0.2", "/api/nodes/n1", None, method="DELETE")[0] == 403
        assert post_from(h, "127.0.0.2", "/api/unregister", {"node_id": "n1"})[0] == 403
        # URLs that are more than scheme, host, port and a plain prefix
        port = attacker.port
        bad_urls = [f"http://127.0.0.1:{port}/x?y=", f"http://127.0.0.1:{port}/x#f", f"http://u:p@127.0.0.1:{port}",
                    f"http://127.0.0.1@127.0.0.1:{port}", f"http://127.0.0.1:{port}/admin/../config",
                    f"http://127.0.0.1:{port}/%2e%2e/admin", f"http://127.0.0.1:{port}/a;b", f"ftp://127.0.0.1:{port}",
                    f"http://127.0.0.1:{port}//x", "http://169.254.169.254:80", "http://169.254.169.254",
                    "http://[fe80::1]:80", "http://[fd00:ec2::254]:80", "http://0.0.0.0:80", "http://224.0.0.1:80",
                    "http://[::ffff:169.254.169.254]:80"]
        for url in bad_urls:
            st, b = post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "url": url})
            assert st == 400, (url, b)
        # host + port of a metadata address
        st, b = post_from(h, "127.0.0.2", "/api/nodes/register",
                          {"engine_type": "xtts", "host": "169.254.169.254", "port": 80})
        assert st == 400 and b["code"] == "address_not_allowed", b
        # capacity of 10^9: refused; a large one within bounds is clamped to registry.max_capacity
        st, b = post_from(h, "127.0.0.2", "/api/nodes/register",
                          {"engine_type": "xtts", "url": attacker.url, "capacity": 10 ** 9})
        assert st == 400, b
        # voices past registry.max_node_bytes
        st, b = post_from(h, "127.0.0.2", "/api/nodes/register",
                          {"engine_type": "xtts", "url": attacker.url, "voices": ["v" * 100] * 40})
        assert st == 400, b
        nodes = requests.get(h.url + "/api/nodes", headers=bearer(TOKEN), timeout=10).json()["nodes"]
        assert [n["node_id"] for n in nodes] == ["n1"] and nodes[0]["url"] == good.url
        # real traffic never reaches the attacker's listener
        for i in range(6):
            r = h.post(data={"input": f"Private text number {i}.", "voice": "alloy", "response_format": "wav"})
            assert r.status_code == 200, r.text
        assert good.calls == 6 and attacker.calls == 0
        assert not any(p.startswith("/synthesize") for _, p, _, _ in attacker.requests)
        # the hub sends the cluster token to its nodes
        assert good.requests[-1][2].get("Authorization") == f"Bearer {TOKEN}"
        # the node's own credential from its own address still may change it
        st, b = post_from(h, "127.0.0.1", "/api/nodes/register",
                          {"node_id": "n1", "engine_type": "xtts", "url": good.url, "capacity": 5000}, bearer(TOKEN))
        assert st == 200, b
        n1 = requests.get(h.url + "/api/nodes/n1", headers=bearer(TOKEN), timeout=10).json()
        assert n1["capacity"] == 8  # clamped
        assert post_from(h, "127.0.0.1", "/api/nodes/n1/heartbeat", {"status": "online"}, bearer(TOKEN))[0] == 200
    finally:
        good.stop()
        attacker.stop()


def test_node_names_are_checked_after_resolution(hub_factory):
    # allowed_networks without loopback: "localhost" resolves to loopback and is refused, and so is 127.0.0.1
    cfg = NODE_CFG.replace("  max_capacity: 8\n", "  max_capacity: 8\n  allowed_networks: [\"10.0.0.0/8\"]\n")
    h = hub_factory(cfg, env={"TTSHUB_CLUSTER_TOKEN": TOKEN})
    attacker = FakeEngine("node", engine="xtts").start()
    try:
        for url in (f"http://localhost:{attacker.port}", f"http://127.0.0.1:{attacker.port}"):
            st, b = post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "url": url})
            assert st == 400 and b["code"] == "address_not_allowed", (url, b)
        st, b = post_from(h, "127.0.0.2", "/api/nodes/register",
                          {"engine_type": "xtts", "url": "http://no-such-host.invalid:80"})
        assert st == 400 and b["code"] == "unresolvable_host", b
        assert requests.get(h.url + "/api/nodes", headers=bearer(TOKEN), timeout=10).json()["count"] == 0
        assert h.post(data={"input": "nobody", "voice": "alloy"}).status_code == 503
        assert attacker.calls == 0
    finally:
        attacker.stop()


def test_control_routes_are_rate_limited_per_ip(hub_factory):
    h = hub_factory("registry:\n  control_rpm: 5\n")
    codes = [requests.get(h.url + "/api/nodes", timeout=10).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3, codes
    # another address has its own budget
    assert post_from(h, "127.0.0.2", "/api/nodes/register", {"engine_type": "xtts", "url": "http://127.0.0.1:9"})[0] == 200


class EvilEngine:
    """An openai_fm-shaped engine that answers 500 with a body holding a secret, or an endless Ogg stream."""

    def __init__(self, mode):
        outer = self
        self.mode = mode
        self.sent = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                if outer.mode == "secret":
                    body = b"Traceback: open('/srv/keys/engine.key') = sk-SECRET-ENGINE-KEY-42 at 10.1.2.3:5432"
                    self.send_response(500)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "audio/ogg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                # a real Ogg Opus file, then more of them chained, for ever
                from fakes import audio_gen as ag
                one = ag.encode(ag.pcm("An endless stream of Ogg pages.", "alloy", 24000), 24000, "ogg")
                try:
                    while True:  # never ends
                        chunk = one
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        outer.sent += len(chunk)
                        if outer.sent > 512 * 1024 * 1024:
                            return
                except OSError:
                    return

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_engine_error_bodies_stay_in_the_log(hub_factory):
    e = EvilEngine("secret")
    try:
        h = hub_factory(f"providers:\n  - name: fm\n    type: openai_fm\n    base_url: \"{e.url}\"\n"
                        "router: { retries: 0, fallback: false }\ncache: { enabled: false }\n")
        r = h.post(data={"input": "hello", "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 502, r.text
        assert "SECRET" not in r.text and "/srv/keys" not in r.text and "10.1.2.3" not in r.text
        rid = r.headers["X-Request-Id"]
        assert rid in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "upstream_error"
        assert "sk-SECRET-ENGINE-KEY-42" in h.output()  # the operator still sees it
    finally:
        e.stop()


# ---- workers ----

def start_worker(hub_factory, *more, env=None):
    port = free_port()
    gw = free_port()  # nothing listens there: the worker keeps trying to register, and serves meanwhile
    args = ["--engine", "espeak", "--gateway", f"http://127.0.0.1:{gw}", "--advertise", f"http://127.0.0.1:{port}",
            "--node-id", "w-sec"] + list(more)
    return hub_factory(None, command="worker", port=port, extra_args=args, env=env)


def test_worker_needs_the_cluster_token_and_serves_only_node_routes(hub_factory):
    w = start_worker(hub_factory, "--token-env", "MY_NODE_TOKEN", env={"MY_NODE_TOKEN": TOKEN})
    node_routes = [("POST", "/synthesize", {"text": "hello", "format": "wav"}), ("POST", "/command", {"command": "standby"}),
                   ("GET", "/info", None)]
    for method, path, body in node_routes:
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic " + TOKEN}):
            r = call(w, method, path, body, headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["success"] is False and r.headers.get("WWW-Authenticate") == "Bearer"
    # hub routes are not served by a worker
    for method, path in (("GET", "/admin/config"), ("GET", "/admin/usage"), ("POST", "/api/generate"),
                         ("POST", "/v1/audio/speech"), ("GET", "/v1/models"), ("GET", "/"), ("GET", "/status"),
                         ("GET", "/api/nodes"), ("POST", "/api/nodes/register"), ("GET", "/ws"), ("GET", "/metrics"),
                         ("GET", "/api/status"), ("POST", "/api/announcements")):
        r = requests.request(method, w.url + path, headers=bearer(TOKEN), timeout=10)
        assert r.status_code in (404, 405), (path, r.status_code)
    assert w.get("/health").status_code == 200
    # with the token it works
    r = call(w, "POST", "/synthesize", {"text": "A node with a token.", "format": "wav"}, bearer(TOKEN))
    assert r.status_code == 200 and probe(r.content, "wav")[0]["codec_name"] == "pcm_s16le"
    assert call(w, "GET", "/info", None, bearer(TOKEN)).json()["node_id"] == "w-sec"
    r = call(w, "POST", "/command", {"command": "standby"}, bearer(TOKEN))
    assert r.status_code == 200 and r.json()["status"] == "standby"


def test_worker_refuses_to_start_without_a_token(tmp_path):
    import subprocess
    from conftest import BIN
    port = free_port()
    p = subprocess.run([BIN, "worker", "--engine", "espeak", "--gateway", "http://127.0.0.1:9", "--listen",
                        f"127.0.0.1:{port}", "--advertise", f"http://127.0.0.1:{port}"],
                       capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert p.returncode == 2 and b"cluster token is not set" in p.stderr


# ---- resources ----

def feed_clients(h):
    for line in h.get("/metrics").text.splitlines():
        if line.startswith("ttshub_feed_clients "):
            return int(float(line.split()[1]))
    raise AssertionError("no ttshub_feed_clients")


def raw_ws(h, source="127.0.0.1"):
    """A WebSocket client that reads the handshake answer and then never reads again."""
    s = socket.create_connection(("127.0.0.1", h.port), timeout=10, source_address=(source, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{h.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    return s, head.split(b"\r\n")[0]


def test_websocket_client_that_never_reads_nor_pongs_is_dropped(hub_factory):
    import asyncio
    import websockets
    h = hub_factory("limits:\n  feed_ping_interval: 200ms\n  feed_idle_timeout: 1s\n  max_feed_per_ip: 3\n")

    async def run():
        async with websockets.connect(f"ws://127.0.0.1:{h.port}/ws", ping_interval=None) as good:
            await good.recv()
            bad, status = raw_ws(h)
            assert b" 101 " in status
            assert feed_clients(h) == 2
            # the bad client is dropped once it has been silent for feed_idle_timeout; the good one, which
            # answers the pings (the websockets library does), stays
            deadline = time.time() + 20
            while time.time() < deadline and feed_clients(h) != 1:
                await asyncio.sleep(0.1)
            assert feed_clients(h) == 1
            await good.send(json.dumps({"type": "ping"}))
            while True:  # the good client still gets answers
                m = json.loads(await asyncio.wait_for(good.recv(), 10))
                if m["type"] == "pong":
                    break
            bad.close()
            # per-IP feed cap: 3 from one address, a 4th refused, another address still served
            socks = [raw_ws(h) for _ in range(2)]
            assert all(b" 101 " in st for _, st in socks)
            extra, st = raw_ws(h)
            assert b" 429 " in st, st
            other, st = raw_ws(h, "127.0.0.2")
            assert b" 101 " in st
            for s, _ in socks + [(extra, None), (other, None)]:
                s.close()

    asyncio.run(run())


def test_one_ip_over_its_connection_cap_is_refused_while_others_are_served(hub_factory):
    h = hub_factory("limits:\n  max_connections_per_ip: 3\n")
    held = []
    for _ in range(3):  # keep-alive connections of 127.0.0.1, each having been served once
        c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        c.request("GET", "/health")
        assert c.getresponse().read()
        held.append(c)
    c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    c.request("GET", "/health")
    r = c.getresponse()
    assert r.status == 503 and b"too_many_connections" in r.read()
    c.close()
    # another address is served meanwhile
    st, _ = post_from(h, "127.0.0.2", "/api/announcements", {"message": "from elsewhere"})
    assert st in (200, 201)
    # one closes: 127.0.0.1 may connect again (the server notices the close on its own time: poll)
    held.pop().close()
    deadline = time.time() + 10
    ok = False
    while time.time() < deadline and not ok:
        c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        c.request("GET", "/health")
        r = c.getresponse()
        ok = b"too_many_connections" not in r.read()
        c.close()
        if not ok:
            time.sleep(0.05)
    for c in held:
        c.close()
    assert ok


def test_hostile_engines_endless_ogg_is_cut_at_the_cap(hub_factory):
    e = EvilEngine("ogg")
    try:
        h = hub_factory(f"providers:\n  - name: fm\n    type: openai_fm\n    base_url: \"{e.url}\"\n"
                        "    timeout: 60s\n"
                        "limits:\n  max_buffered_audio: 1MiB\n"
                        "router: { retries: 0, fallback: false }\ncache: { enabled: false }\n")
        # mp3: nothing goes out before the engine's audio decodes, so the failure is a clean 502
        r = h.post(data={"input": "hello", "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["type"] == "upstream_error"
        # cut near the cap (1 MiB, plus what the sockets held), far below the old 256 MiB
        assert e.sent < 64 * 1024 * 1024, e.sent
        assert "buffered-audio cap" in h.output()
        assert h.get("/health").status_code == 200
    finally:
        e.stop()


def tenant_keys(extra=""):
    ka, kb = "ka-" + "1" * 30, "kb-" + "2" * 30
    cfg = ("auth:\n  mode: api_key\n  keys:\n"
           f"    - {{ id: a, sha256: \"{hashlib.sha256(ka.encode()).hexdigest()}\", tenant: alpha }}\n"
           f"    - {{ id: b, sha256: \"{hashlib.sha256(kb.encode()).hexdigest()}\", tenant: beta }}\n"
           "tenants:\n  alpha: {}\n  beta: {}\n" + extra)
    return cfg, ka, kb


@pytest.mark.parametrize("per_tenant", [True, False])
def test_cache_is_per_tenant_unless_shared_on_purpose(hub_factory, per_tenant):
    cfg, ka, kb = tenant_keys(f"cache:\n  per_tenant: {'true' if per_tenant else 'false'}\n"
                              f"metrics_tenant_labels: {'false' if per_tenant else 'true'}\n")
    h = hub_factory(cfg)
    body = {"input": "The same words from two tenants.", "voice": "alloy", "response_format": "wav"}
    a1 = h.post(data=body, headers=bearer(ka))
    a2 = h.post(data=body, headers=bearer(ka))
    b1 = h.post(data=body, headers=bearer(kb))
    assert a1.headers["X-Cache"] == "MISS" and a2.headers["X-Cache"] == "HIT"
    assert b1.headers["X-Cache"] == ("MISS" if per_tenant else "HIT")
    metrics = h.get("/metrics").text
    chars = [line for line in metrics.splitlines() if line.startswith("ttshub_characters")]
    assert chars, metrics[:2000]
    if per_tenant:  # metrics_tenant_labels: false here
        assert not any("alpha" in line or "beta" in line for line in chars), chars
    else:
        assert any('tenant="alpha"' in line for line in chars), chars


def test_buffered_bodies_share_one_budget(hub_factory):
    h = hub_factory("limits:\n  max_buffered_bodies: 1MiB\n")
    big = 600 * 1024
    slow = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    slow.sendall((f"POST /api/announcements HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {big}\r\n\r\n").encode() + b"{")
    # the slow body holds 600 KiB of the budget: another one that large gets 503 (poll: the hub reads the
    # slow head on its own time)
    deadline = time.time() + 10
    r = None
    while time.time() < deadline:
        r = requests.post(h.url + "/api/announcements", data=b" " * big, headers={"Content-Type": "application/json"},
                          timeout=10)
        if r.status_code == 503:
            break
        time.sleep(0.05)
    assert r.status_code == 503 and "server_busy" in r.text, r.text
    # requests without a large body are still served
    assert h.get("/api/status").status_code == 200
    assert call(h, "POST", "/api/announcements", {"message": "small"}).status_code in (200, 201)
    slow.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        r = requests.post(h.url + "/api/announcements", data=b" " * big, headers={"Content-Type": "application/json"},
                          timeout=10)
        if r.status_code != 503:
            break
        time.sleep(0.05)
    assert r.status_code == 400  # served (a body of spaces is not a JSON object)
