"""The worker registry: node registration, heartbeats, liveness, auth, and routing requests to nodes.

Nodes here are the faithful fake node (fakes/engines.py, the API.md node protocol); the test plays the node's
registration client itself, so every step of the control protocol is visible. test_worker.py covers the real
`ttshub worker`, and test_worker_cluster below runs real workers against a real hub.
"""
import concurrent.futures
import hashlib
import json
import threading
import time

import pytest
import requests

from audio import decoded_seconds, probe
from fakes.engines import FakeEngine

TOKEN = "cluster-secret-0123456789"


def hub_config(engine="xtts", strategy="round_robin", timings=None, extra=""):
    # dead_threshold leaves a loaded machine (parallel tests, ASan) time between a node's registration and
    # the requests a test sends it
    t = timings or {"heartbeat_interval": "1s", "dead_threshold": "5s", "remove_after": "10s"}
    return ("providers:\n"
            "  - name: workers\n"
            "    type: nodes\n"
            f"    engine: {engine}\n"
            f"    strategy: {strategy}\n"
            "    timeout: 5s\n"
            "    concurrency: 16\n"
            "cache: { enabled: false }\n"
            "registry:\n"
            f"  heartbeat_interval: {t['heartbeat_interval']}\n"
            f"  dead_threshold: {t['dead_threshold']}\n"
            f"  remove_after: {t['remove_after']}\n" + extra)


@pytest.fixture
def nodes():
    made = []

    def make(**kw):
        kw.setdefault("engine", "xtts")
        f = FakeEngine("node", **kw).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def register(h, url, engine="xtts", token=TOKEN, **fields):
    body = {"engine_type": engine, "url": url, "capacity": 4, "model_loaded": True, "status": "online"}
    body.update(fields)
    return h.post("/api/nodes/register", json=body, headers=auth(token) if token else {})


def env():
    return {"TTSHUB_CLUSTER_TOKEN": TOKEN}


def clone_error(r, status, code=None):
    assert r.status_code == status, r.text
    b = r.json()
    assert b["success"] is False and isinstance(b["message"], str) and b["message"]
    if code:
        assert b["code"] == code, b


def test_register_list_get_heartbeat_delete(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    n = nodes()
    r = register(h, n.url + "/", voices=["alice", "bob"], languages=["en"])
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["success"] is True and b["heartbeat_interval"] == 1.0
    nid = b["node_id"]
    assert nid.startswith("xtts-")
    r = h.get("/api/nodes", headers=auth())
    assert r.status_code == 200
    lst = r.json()
    assert lst["count"] == 1 and lst["nodes"][0]["node_id"] == nid
    node = h.get(f"/api/nodes/{nid}", headers=auth()).json()
    assert node["url"] == n.url and node["engine_type"] == "xtts" and node["status"] == "online"
    assert node["capacity"] == 4 and node["voices"] == ["alice", "bob"] and node["languages"] == ["en"]
    assert node["in_flight"] == 0 and node["online"] is True
    r = h.post(f"/api/nodes/{nid}/heartbeat", headers=auth(),
               json={"status": "busy", "model_loaded": True, "current_concurrent": 3, "queue_size": 2,
                     "cpu_percent": 41.5, "memory_percent": 12})
    assert r.status_code == 200 and r.json() == {"success": True}
    node = h.get(f"/api/nodes/{nid}", headers=auth()).json()
    assert node["status"] == "busy" and node["current_concurrent"] == 3 and node["cpu_percent"] == 41.5
    # filters
    assert h.get("/api/nodes?engine=xtts&status=busy", headers=auth()).json()["count"] == 1
    assert h.get("/api/nodes?engine=fish", headers=auth()).json()["count"] == 0
    assert h.get("/api/nodes?status=online", headers=auth()).json()["count"] == 0
    # registering again with the id keeps it; without it, the same URL takes the old entry's place
    r = register(h, n.url, node_id=nid, capacity=8)
    assert r.json()["node_id"] == nid
    r = register(h, n.url)
    assert r.status_code == 200
    assert h.get("/api/nodes", headers=auth()).json()["count"] == 1
    nid = r.json()["node_id"]
    # delete, then the node is unknown: a heartbeat gets 404 so the node registers again
    r = requests.delete(f"{h.url}/api/nodes/{nid}", headers=auth(), timeout=10)
    assert r.status_code == 200 and r.json()["success"] is True
    clone_error(h.post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={"status": "online"}), 404,
                "unknown_node")
    clone_error(h.get(f"/api/nodes/{nid}", headers=auth()), 404, "unknown_node")
    clone_error(requests.delete(f"{h.url}/api/nodes/{nid}", headers=auth(), timeout=10), 404)
    assert h.get("/api/nodes", headers=auth()).json() == {"nodes": [], "count": 0}


def test_seed1_aliases_and_host_port(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    n = nodes()
    port = int(n.url.rsplit(":", 1)[1])
    r = h.post("/api/register", headers=auth(),
               json={"node_id": "gpu-box-1", "engine_type": "xtts", "host": "127.0.0.1", "port": port,
                     "capacity": 2, "model_loaded": True, "status": "online"})
    assert r.status_code == 200, r.text
    assert r.json()["node_id"] == "gpu-box-1"
    assert h.get("/api/nodes/gpu-box-1", headers=auth()).json()["url"] == n.url
    assert h.post("/api/heartbeat", headers=auth(), json={"node_id": "gpu-box-1", "status": "online"}).json() == \
        {"success": True}
    clone_error(h.post("/api/heartbeat", headers=auth(), json={"status": "online"}), 400, "missing_node_id")
    clone_error(h.post("/api/heartbeat", headers=auth(), json={"node_id": "nope"}), 404)
    r = h.post("/api/unregister", headers=auth(), json={"node_id": "gpu-box-1"})
    assert r.status_code == 200
    assert h.get("/api/nodes", headers=auth()).json()["count"] == 0


@pytest.mark.parametrize("body,what", [
    ({"url": "http://127.0.0.1:1"}, "engine_type"),
    ({"engine_type": "xtts"}, "url"),
    ({"engine_type": "x tts", "url": "http://127.0.0.1:1"}, "engine_type"),
    ({"engine_type": "xtts", "url": "ftp://127.0.0.1:1"}, "url"),
    ({"engine_type": "xtts", "url": "http://a b"}, "url"),
    ({"engine_type": "xtts", "url": "http://h:1", "capacity": 0}, "capacity"),
    ({"engine_type": "xtts", "url": "http://h:1", "capacity": "4"}, "capacity"),
    ({"engine_type": "xtts", "url": "http://h:1", "node_id": "../etc"}, "node_id"),
    ({"engine_type": "xtts", "url": "http://h:1", "node_id": "x" * 65}, "node_id"),
    ({"engine_type": "xtts", "url": "http://h:1", "model_loaded": "yes"}, "model_loaded"),
    ({"engine_type": "xtts", "url": "http://h:1", "voices": "alice"}, "voices"),
    ({"engine_type": "xtts", "url": "http://h:1", "voices": [1, 2]}, "voices"),
    ({"engine_type": "xtts", "host": "127.0.0.1", "port": 70000}, "port"),
    ({"engine_type": "xtts", "url": "http://h:1" + "/p" * 400}, "url"),
])
def test_register_rejects_bad_bodies(hub_factory, body, what):
    h = hub_factory(hub_config(), env=env())
    r = h.post("/api/nodes/register", headers=auth(), json=body)
    clone_error(r, 400, "invalid_node")
    assert what in r.json()["message"]


def test_register_rejects_bad_json(hub_factory):
    h = hub_factory(hub_config(), env=env())
    js = dict(auth(), **{"Content-Type": "application/json"})
    clone_error(h.post("/api/nodes/register", headers=js, data=b"{not json"), 400, "malformed_body")
    clone_error(h.post("/api/nodes/register", headers=auth(), json=[1]), 400, "malformed_body")
    clone_error(h.post("/api/nodes/register", headers=js, data=b"[" * 100 + b"]" * 100), 400)
    # JSON routes take JSON only (a cross-site form post cannot reach them)
    clone_error(h.post("/api/nodes/register", headers=auth(), data=b'{"engine_type":"xtts"}'), 415)
    clone_error(h.post("/api/nodes/x/command", headers=auth(), json={"command": "reboot"}), 400, "invalid_command")
    assert h.get("/health").status_code in (200, 503)


def test_cluster_token_and_admin_role(hub_factory, nodes):
    admin_key, user_key = "adm-" + "a" * 28, "usr-" + "b" * 28
    extra = ("auth:\n  mode: api_key\n  keys:\n"
             f"    - {{ id: a, sha256: \"{hashlib.sha256(admin_key.encode()).hexdigest()}\", role: admin }}\n"
             f"    - {{ id: u, sha256: \"{hashlib.sha256(user_key.encode()).hexdigest()}\", role: user }}\n")
    # trusted_networks: [] -> not even loopback registers without a credential
    h = hub_factory(hub_config(extra="  trusted_networks: []\n" + extra), env=env())
    n = nodes()
    clone_error(register(h, n.url, token=None), 401)
    clone_error(register(h, n.url, token="wrong-token"), 401)
    clone_error(register(h, n.url, token=user_key), 403)
    assert register(h, n.url, token=admin_key).status_code == 200
    # a node an admin registered belongs to that admin: the cluster token cannot take it over
    clone_error(register(h, n.url, token=TOKEN), 403, "node_owned")
    assert register(h, nodes().url, token=TOKEN).status_code == 200
    assert register(h, n.url, token=admin_key).status_code == 200
    clone_error(h.get("/api/nodes"), 401)
    assert h.get("/api/nodes", headers=auth(admin_key)).json()["count"] == 2
    # the control routes never count against the client limits
    # an open hub with a cluster token still asks for the token (from outside registry.trusted_networks)
    h2 = hub_factory(hub_config(extra="  trusted_networks: []\n"), env=env())
    r = register(h2, n.url, token=None)
    clone_error(r, 401, "missing_credentials")
    assert r.headers.get("WWW-Authenticate") == "Bearer"
    clone_error(register(h2, n.url, token="nope"), 401, "invalid_credentials")
    # nodes from registry.trusted_networks (default: loopback) need no token, with or without one set
    h3 = hub_factory(hub_config())
    assert register(h3, n.url, token=None).status_code == 200
    h4 = hub_factory(hub_config(), env=env())
    assert register(h4, n.url, token=None).status_code == 200
    # but operator routes still want the token when one is set
    clone_error(h4.get("/api/nodes"), 401)


def test_control_routes_skip_rate_limits(hub_factory, nodes):
    h = hub_factory(hub_config(extra="rate_limit: { global_rpm: 2, ip_rpm: 2 }\n"), env=env())
    n = nodes()
    nid = register(h, n.url).json()["node_id"]
    for _ in range(10):
        assert h.post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={}).status_code == 200


def test_requests_go_to_registered_nodes_round_robin(hub_factory, nodes):
    # no heartbeats are sent here: the nodes must stay online however slowly a loaded machine runs the checks
    h = hub_factory(hub_config(timings={"heartbeat_interval": "1s", "dead_threshold": "60s", "remove_after": "120s"}),
                    env=env())
    a, b = nodes(node_id="a"), nodes(node_id="b")
    # a node of another engine never gets xtts traffic
    other = nodes(engine="fish")
    for n, eng in ((a, "xtts"), (b, "xtts"), (other, "fish")):
        assert register(h, n.url, engine=eng).status_code == 200
    text = "Routed to a registered worker node."
    for i in range(4):
        r = h.post(data={"input": text, "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Provider"] == "workers"
        assert probe(r.content, "mp3")[0]["codec_name"] == "mp3"
        assert abs(decoded_seconds(r.content, "mp3") - len(text) * 0.06) < 0.35
    assert a.calls == 2 and b.calls == 2 and other.calls == 0
    # the node got the text and voice as is
    method, target, _, body = a.requests[-1]
    assert method == "POST" and target == "/synthesize"
    sent = json.loads(body)
    assert sent["voice"] == "alloy" and sent["text"] == text and sent["format"] == "mp3"
    nodes_now = {x["url"]: x for x in h.get("/api/nodes", headers=auth()).json()["nodes"]}
    assert nodes_now[a.url]["requests"] == 2 and nodes_now[a.url]["in_flight"] == 0
    # OpenAI route too, wav
    r = h.post("/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    health = h.get("/health").json()
    assert health["components"]["registry"]["nodes"] == 3 and health["components"]["registry"]["online"] == 3
    assert health["components"]["providers"]["workers"]["nodes_online"] == 2
    metrics = h.get("/metrics").text
    assert 'ttshub_nodes{state="online"} 3' in metrics and 'ttshub_nodes{state="not_routable"} 0' in metrics


def test_no_node_is_503_and_health_says_so(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    r = h.post("/v1/audio/speech", json={"model": "tts-1", "input": "nobody home", "voice": "alloy"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "upstream_overloaded"
    health = h.get("/health")
    assert health.status_code == 503 and health.json()["components"]["providers"]["workers"]["status"] == "unhealthy"
    n = nodes()
    register(h, n.url)
    assert h.get("/health").json()["status"] == "healthy"
    assert h.post(data={"input": "now there is one", "voice": "alloy"}).status_code == 200


def test_silent_node_goes_offline_then_is_removed(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    alive, silent = nodes(node_id="alive"), nodes(node_id="silent")
    ida = register(h, alive.url).json()["node_id"]
    ids = register(h, silent.url).json()["node_id"]
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            requests.post(f"{h.url}/api/nodes/{ida}/heartbeat", headers=auth(), json={"status": "online"}, timeout=5)
            stop.wait(0.5)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            if h.get(f"/api/nodes/{ids}", headers=auth()).json()["status"] == "offline":
                break
            time.sleep(0.2)
        node = h.get(f"/api/nodes/{ids}", headers=auth()).json()
        assert node["status"] == "offline" and node["online"] is False
        assert h.get("/api/nodes?status=offline", headers=auth()).json()["count"] == 1
        silent.reset()
        alive.reset()
        for _ in range(4):
            assert h.post(data={"input": "only the live one", "voice": "alloy"}).status_code == 200
        assert silent.calls == 0 and alive.calls == 4
        # a heartbeat brings it back
        assert h.post(f"/api/nodes/{ids}/heartbeat", headers=auth(), json={"status": "online"}).status_code == 200
        assert h.get(f"/api/nodes/{ids}", headers=auth()).json()["status"] == "online"
        # silent again: removed after remove_after
        deadline = time.time() + 30
        while time.time() < deadline:
            if h.get(f"/api/nodes/{ids}", headers=auth()).status_code == 404:
                break
            time.sleep(0.2)
        assert h.get(f"/api/nodes/{ids}", headers=auth()).status_code == 404
        assert h.get(f"/api/nodes/{ida}", headers=auth()).json()["status"] == "online"
    finally:
        stop.set()
        t.join()


def test_capacity_is_respected(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    n = nodes(latency=1.0)
    register(h, n.url, capacity=1)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(h.post, data={"input": f"request {i}", "voice": "alloy"}) for i in range(2)]
        codes = sorted(f.result().status_code for f in futs)
    assert codes == [200, 503]
    assert n.calls == 1


def test_least_load_prefers_the_idle_node(hub_factory, nodes):
    h = hub_factory(hub_config(strategy="least_load", timings={"heartbeat_interval": "1s", "dead_threshold": "30s", "remove_after": "60s"}), env=env())
    slow = nodes(node_id="slow", latency=1.5)
    fast = nodes(node_id="fast")
    register(h, slow.url, capacity=8, node_id="slow")  # first registered: ties go to it
    register(h, fast.url, capacity=8)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        first = ex.submit(h.post, data={"input": "a long one", "voice": "alloy"})
        deadline = time.time() + 5
        while slow.calls == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert slow.calls == 1 and fast.calls == 0
        # while one request is in flight on the slow node, the next ones go to the idle one
        for i in range(3):
            assert h.post(data={"input": f"quick {i}", "voice": "alloy"}).status_code == 200
        assert fast.calls == 3 and slow.calls == 1
        assert first.result().status_code == 200
    # round robin would have sent one of the three to the slow node
    assert h.get("/api/nodes/slow", headers=auth()).json()["requests"] == 1


def test_failing_node_falls_back_to_the_next(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    bad, good = nodes(node_id="bad"), nodes(node_id="good")
    register(h, bad.url)
    register(h, good.url)
    bad.set_fault("status_500")
    for _ in range(4):
        r = h.post(data={"input": "keep answering", "voice": "alloy"})
        assert r.status_code == 200, r.text
    assert good.ok == 4
    failures = {x["url"]: x["failures"] for x in h.get("/api/nodes", headers=auth()).json()["nodes"]}
    assert failures[bad.url] >= 1 and failures[good.url] == 0


def test_commands_are_relayed_and_change_routing(hub_factory, nodes):
    h = hub_factory(hub_config(), env=env())
    a, b = nodes(node_id="a"), nodes(node_id="b")
    ida = register(h, a.url).json()["node_id"]
    register(h, b.url)
    r = h.post(f"/api/nodes/{ida}/command", headers=auth(), json={"command": "standby"})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "node_id": ida, "command": "standby", "status": "standby"}
    method, target, _, body = a.requests[-1]
    assert (method, target, json.loads(body)) == ("POST", "/command", {"command": "standby"})
    assert h.get(f"/api/nodes/{ida}", headers=auth()).json()["status"] == "standby"
    a.reset()
    b.reset()
    for _ in range(3):
        assert h.post(data={"input": "not to the standby node", "voice": "alloy"}).status_code == 200
    assert a.calls == 0 and b.calls == 3
    assert h.post(f"/api/nodes/{ida}/command", headers=auth(), json={"command": "activate"}).json()["status"] == \
        "online"
    for _ in range(2):
        assert h.post(data={"input": "both again", "voice": "alloy"}).status_code == 200
    assert a.calls == 1
    clone_error(h.post("/api/nodes/nope/command", headers=auth(), json={"command": "stop"}), 404)
    # a node that is gone: 502, and its entry stays as it was
    from conftest import free_port
    ghost = register(h, f"http://127.0.0.1:{free_port()}", node_id="ghost").json()["node_id"]
    clone_error(h.post(f"/api/nodes/{ghost}/command", headers=auth(), json={"command": "standby"}), 502,
                "node_unreachable")
    assert h.get(f"/api/nodes/{ghost}", headers=auth()).json()["status"] == "online"


# ---- registry.backend: redis: every hub on one Redis shares the registry ----

def shared_config(redis_port, extra=""):
    return hub_config(extra=f"redis: {{ url: \"redis://127.0.0.1:{redis_port}/0\", prefix: \"reg{redis_port}:\" }}\n"
                            + extra).replace("registry:\n", "registry:\n  backend: redis\n")


def wait_for(fn, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    return fn()


def test_shared_registry_across_hubs(hub_factory, nodes, redis_server):
    hubs = [hub_factory(shared_config(redis_server.port), env=env()) for _ in range(3)]
    a, b = hubs[0], hubs[1]
    n = nodes(node_id="n")
    nid = register(a, n.url, node_id="shared-1", voices=["alice"]).json()["node_id"]
    # the other hubs learn of it within about a second, and route to it
    for h in hubs[1:]:
        assert wait_for(lambda: h.get(f"/api/nodes/{nid}", headers=auth()).status_code == 200)
        node = h.get(f"/api/nodes/{nid}", headers=auth()).json()
        assert node["url"] == n.url and node["voices"] == ["alice"] and node["status"] == "online"
        # a loaded machine may take longer than dead_threshold (5 s) to get here: keep the node alive
        assert h.post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={"status": "online"}).status_code == 200
        r = h.post(data={"input": f"through hub {h.port}", "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 200, r.text
        assert probe(r.content, "mp3")[0]["codec_name"] == "mp3"
    assert n.calls == 2
    # heartbeats to any one hub keep it alive on every hub (dead_threshold is 5 s)
    for _ in range(14):
        assert hubs[2].post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={"status": "online"}).status_code \
            == 200
        time.sleep(0.5)
    for h in hubs:
        assert h.get(f"/api/nodes/{nid}", headers=auth()).json()["status"] == "online"
    # a status change through one hub shows on the others
    hubs[2].post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={"status": "busy", "cpu_percent": 77})
    assert wait_for(lambda: a.get(f"/api/nodes/{nid}", headers=auth()).json()["status"] == "busy")
    assert a.get(f"/api/nodes/{nid}", headers=auth()).json()["cpu_percent"] == 77
    # a delete through one hub removes it everywhere
    assert requests.delete(f"{b.url}/api/nodes/{nid}", headers=auth(), timeout=10).status_code == 200
    for h in hubs:
        assert wait_for(lambda: h.get(f"/api/nodes/{nid}", headers=auth()).status_code == 404)
    assert a.post(data={"input": "nobody now", "voice": "alloy"}).status_code == 503


def test_shared_registry_silence_and_redis_outage(hub_factory, nodes, redis_server):
    hubs = [hub_factory(shared_config(redis_server.port), env=env()) for _ in range(2)]
    n = nodes()
    nid = register(hubs[0], n.url).json()["node_id"]
    assert wait_for(lambda: hubs[1].get(f"/api/nodes/{nid}", headers=auth()).status_code == 200)
    # silent: offline on both hubs, then removed on both (remove_after 10 s); a slow machine may find the
    # second hub past its offline window already
    assert wait_for(lambda: hubs[0].get(f"/api/nodes/{nid}", headers=auth()).json().get("status") == "offline",
                    timeout=20)
    def offline_or_gone():
        r = hubs[1].get(f"/api/nodes/{nid}", headers=auth())
        return r.status_code == 404 or r.json()["status"] == "offline"
    assert wait_for(offline_or_gone, timeout=20)
    for h in hubs:
        assert wait_for(lambda: h.get(f"/api/nodes/{nid}", headers=auth()).status_code == 404, timeout=30)
    # Redis down: each hub keeps what it knows and still takes registrations; when Redis is back the others
    # learn of nodes registered meanwhile
    redis_server.stop()
    assert wait_for(lambda: hubs[0].get("/health").json()["components"]["redis"]["connected"] is False)
    nid = register(hubs[0], n.url, node_id="during-outage").json()["node_id"]
    assert hubs[0].post(data={"input": "redis is down", "voice": "alloy"}).status_code == 200
    redis_server.start()
    # the next heartbeat to the first hub writes the record again
    assert wait_for(lambda: hubs[0].get("/health").json()["components"]["redis"]["connected"] is True, timeout=15)
    hubs[0].post(f"/api/nodes/{nid}/heartbeat", headers=auth(), json={"status": "online"})
    assert wait_for(lambda: hubs[1].get(f"/api/nodes/{nid}", headers=auth()).status_code == 200, timeout=15)
