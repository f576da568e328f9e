"""deploy/compose.yaml: the whole cluster (Redis, two hubs, two workers, HAProxy) started with podman-compose
under its own project name, reached only through the ports it publishes on 127.0.0.1, with the test overlay
deploy/compose.test.yaml (an engine that can clone: a fake of fish-speech's API, and the hub config with a
provider for it). The tests run in file order on one cluster; the last one takes it down and checks that
nothing is left."""
import bisect
import os
import re
import secrets
import subprocess
import time
import uuid

import pytest
import requests
import yaml

from audio import decoded_seconds, probe
from conftest import IMAGE, ROOT, free_port, need, need_image, podman, wait_until
from fakes.engines import wav_info

COMPOSE = os.path.join(ROOT, "deploy", "compose.yaml")
COMPOSE_TEST = os.path.join(ROOT, "deploy", "compose.test.yaml")
HUB_CONFIG = os.path.join(ROOT, "deploy", "compose", "ttshub.yaml")
TEST_HUB_CONFIG = os.path.join(ROOT, "deploy", "compose-test", "ttshub.yaml")
FAKE_ENGINE_IMAGE = "localhost/ttshub-fake-engine:latest"


class Cluster:
    def __init__(self):
        self.project = "ttshubt" + uuid.uuid4().hex[:8]
        self.token = secrets.token_hex(16)
        self.ports = {k: free_port() for k in ("TTSHUB_PORT", "TTSHUB_STATS_PORT", "TTSHUB_HUB1_METRICS_PORT",
                                               "TTSHUB_HUB2_METRICS_PORT", "TTSHUB_TEST_ENGINE_PORT")}
        self.env = dict(os.environ, TTSHUB_CLUSTER_TOKEN=self.token, **{k: str(v) for k, v in self.ports.items()})
        self.url = f"http://127.0.0.1:{self.ports['TTSHUB_PORT']}"
        self.engine = f"http://127.0.0.1:{self.ports['TTSHUB_TEST_ENGINE_PORT']}"  # the fake's control routes
        self.sent = []  # (monotonic time, status) of every synthesis request made through the balancer

    def compose(self, *args, timeout=600, check=True):
        p = subprocess.run(["podman-compose", "-p", self.project, "-f", COMPOSE, "-f", COMPOSE_TEST, *args], capture_output=True,
                           text=True, timeout=timeout, env=self.env, cwd=os.path.dirname(COMPOSE))
        if check and p.returncode != 0:
            raise AssertionError(f"podman-compose {' '.join(args)}: {p.returncode}\n{p.stdout[-3000:]}\n"
                                 f"{p.stderr[-3000:]}")
        return p

    def container(self, service):
        return f"{self.project}_{service}_1"

    def logs(self, service):
        p = podman("logs", self.container(service), check=False)
        return p.stdout + p.stderr

    def say(self, text, fmt="mp3", timeout=60):
        r = requests.post(self.url + "/api/generate", data={"input": text, "voice": "alloy",
                                                            "response_format": fmt}, timeout=timeout)
        self.sent.append((time.monotonic(), r.status_code))
        return r

    def nodes(self):
        r = requests.get(self.url + "/api/nodes", headers={"Authorization": "Bearer " + self.token}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        return body.get("nodes", body) if isinstance(body, dict) else body

    def leftovers(self):
        label = f"label=io.podman.compose.project={self.project}"
        cs = podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split()
        vs = podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
        vs += [v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
               if v.startswith(self.project + "_") and v not in vs]
        ns = [n for n in podman("network", "ls", "--format", "{{.Name}}").stdout.split()
              if n.startswith(self.project + "_")]
        ps = [p for p in podman("pod", "ps", "--format", "{{.Name}}").stdout.split() if self.project in p]
        return cs, vs, ns, ps

    def destroy(self):
        """Whatever a failed test left: containers, volumes, pods and the network of this project."""
        self.compose("down", "-v", timeout=300, check=False)
        cs, vs, ns, ps = self.leftovers()
        for c in cs:
            podman("rm", "-f", "-t", "0", "-v", c, check=False)
        for p in ps:
            podman("pod", "rm", "-f", p, check=False)
        for v in vs:
            podman("volume", "rm", "-f", v, check=False)
        for n in ns:
            podman("network", "rm", "-f", n, check=False)


@pytest.fixture(scope="module")
def cluster():
    need("podman-compose")
    for image in (IMAGE, "localhost/ttshub-redis:latest", "localhost/ttshub-lb:latest", FAKE_ENGINE_IMAGE):
        need_image(image)
    c = Cluster()
    try:
        c.compose("up", "-d")
        wait_until("the balancer and a hub", lambda: requests.get(c.url + "/health", timeout=5).ok, 120)
        wait_until("both workers registered",
                   lambda: sorted(n["node_id"] for n in c.nodes() if n.get("status") == "online")
                   == ["worker1", "worker2"], 120, interval=0.5)
        wait_until("the cloning engine", lambda: requests.get(c.engine + "/__fake/stats", timeout=5).ok, 60)
        yield c
    finally:
        c.destroy()


def served_by(r):
    return r.headers.get("X-Served-By")


def test_balancer_reaches_both_hubs(cluster):
    seen = set()
    for i in range(8):
        r = cluster.say(f"Balanced request number {i}.")
        assert r.status_code == 200, r.text
        assert decoded_seconds(r.content, "mp3") > 0.5
        seen.add(served_by(r))
    assert seen == {"hub1", "hub2"}


def test_workers_registered_and_take_node_traffic(cluster):
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    assert set(nodes) == {"worker1", "worker2"}
    for n in nodes.values():
        assert n["engine_type"] == "espeak" and n["status"] == "online"
        assert n["url"] in ("http://worker1:9000", "http://worker2:9000")
    for i in range(8):
        r = cluster.say(f"A request for the worker nodes, number {i}, {uuid.uuid4().hex[:6]}.")
        assert r.status_code == 200 and r.headers["X-Provider"] == "workers", (r.status_code, r.headers)
    for w in ("worker1", "worker2"):
        wait_until(f"{w} logging a synthesis", lambda: "/synthesize" in cluster.logs(w), 30)


def metrics(cluster, n):
    return requests.get(f"http://127.0.0.1:{cluster.ports[f'TTSHUB_HUB{n}_METRICS_PORT']}/metrics",
                        timeout=10).text


def test_each_hub_has_its_metrics_port(cluster):
    for n in (1, 2):
        m = metrics(cluster, n)
        assert "ttshub_redis_connected 1\n" in m
        assert 'ttshub_nodes{state="online"} 2\n' in m  # the registry is shared through Redis
        assert re.search(r'^ttshub_requests_total\{route="/api/generate",status="200"\} \d+', m, re.M)
    # the balancer's own page, and the status page through it
    assert requests.get(f"http://127.0.0.1:{cluster.ports['TTSHUB_STATS_PORT']}/healthz", timeout=5).ok
    page = requests.get(cluster.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    st = requests.get(cluster.url + "/api/status", timeout=10)
    assert st.status_code == 200 and st.json()["nodes"] == {"total": 2, "online": 2, "offline": 0}, st.text


def test_status_page_live_feed_through_the_balancer(cluster):
    """The status page's WebSocket (/ws) passes HAProxy and shows the nodes."""
    import asyncio
    import json

    import websockets

    async def first_status():
        async with websockets.connect(cluster.url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m["type"] == "system_status":
                    return m["data"]

    data = asyncio.run(asyncio.wait_for(first_status(), 30))
    assert data["nodes"]["online"] == 2, data


def through(cluster, hub, method, path, **kw):
    """Repeats a request through the balancer until the given hub answers it (round robin alternates)."""
    for _ in range(10):
        r = requests.request(method, cluster.url + path, timeout=60, **kw)
        if served_by(r) == hub:
            return r
    raise AssertionError(f"{hub} never answered {path}")


def test_test_overlay_config_is_the_shipped_one_plus_a_cloning_engine():
    """deploy/compose-test/ttshub.yaml, which the cluster tests run, is deploy/compose/ttshub.yaml with one more
    provider: what is tested is what ships."""
    shipped, tested = (yaml.safe_load(open(p)) for p in (HUB_CONFIG, TEST_HUB_CONFIG))
    extra = tested["providers"].pop()
    assert tested == shipped
    assert extra["type"] == "fish" and extra["base_url"] == "http://fish:50000"
    overlay = yaml.safe_load(open(COMPOSE_TEST))["services"]
    assert overlay["fish"]["image"] == FAKE_ENGINE_IMAGE
    assert all(overlay[h]["volumes"] == ["./compose-test:/etc/ttshub:ro"] for h in ("hub1", "hub2"))


def engine_references(cluster):
    r = requests.get(cluster.engine + "/__fake/references", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["references"]


def test_voice_made_on_one_hub_is_spoken_by_the_other(cluster):
    """voice_library.backend redis: a voice uploaded through one hub is listed, its reference served, and
    spoken by the other, whose request carries the library's reference to the cloning engine."""
    ref = cluster.say("This is the reference recording for a cloned voice, a few seconds long.", fmt="wav")
    assert ref.status_code == 200
    vid = "cv_" + uuid.uuid4().hex[:8]
    text = "The reference, word for word."
    r = requests.post(cluster.url + "/api/extract_voice", files={"audio": ("ref.wav", ref.content, "audio/wav")},
                      data={"voice_id": vid, "voice_name": "Cluster voice", "reference_text": text}, timeout=60)
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    maker = served_by(r)
    other = {"hub1": "hub2", "hub2": "hub1"}[maker]
    # the other hub reads the library back from Redis within about half a second
    r = wait_until(f"{other} to know {vid}",
                   lambda: (lambda x: x if x.status_code == 200 else None)(
                       through(cluster, other, "GET", f"/api/voices/{vid}")), 30, interval=0.2)
    assert vid in r.text and sha in r.text
    listed = through(cluster, other, "GET", "/api/voices")
    assert listed.status_code == 200 and vid in listed.text, listed.text
    a = through(cluster, other, "GET", f"/api/voices/{vid}/audio")
    assert a.status_code == 200 and a.headers["X-Voice-Sha256"] == sha and a.content[:4] == b"RIFF"
    stored = wav_info(a.content)
    assert stored is not None and stored["seconds"] > 2

    # spoken through the other hub: repeat (new text each time, so no cache answers) until it is the one
    # that answers, and check that this very request carried the reference to the engine
    for i in range(10):
        before = len(engine_references(cluster))
        s = requests.post(cluster.url + "/api/synthesize", timeout=60,
                          json={"text": f"Spoken in the cloned voice, take {i}, {uuid.uuid4().hex[:6]}.",
                                "voice_id": vid, "output_format": "mp3"})
        assert s.status_code == 200, s.text
        assert s.headers["X-Provider"] == "clone", s.headers  # not the espeak workers, not the local engine
        refs = engine_references(cluster)
        assert len(refs) == before + 1, refs[before:]
        if served_by(s) == other:
            break
    else:
        raise AssertionError(f"{other} never answered /api/synthesize")
    assert probe(s.content, "mp3")[0]["codec_name"] == "mp3"
    assert decoded_seconds(s.content, "mp3") > 1.0
    got = refs[-1]
    assert got["via"] == "inline" and got["text"] == text
    assert got["wav"] == stored, (got["wav"], stored)  # the library's audio, sample for sample


def test_hub_killed_requests_keep_succeeding(cluster):
    podman("kill", cluster.container("hub1"))
    for i in range(20):
        r = cluster.say(f"Still speaking after a hub died, {i}.", timeout=120)
        assert r.status_code == 200, r.text
        assert served_by(r) == "hub2"
    # hub1 comes back, and the balancer sends it traffic again
    podman("start", cluster.container("hub1"))

    def back():
        return served_by(cluster.say("Is hub one back?", fmt="wav")) == "hub1"

    wait_until("hub1 taking traffic again", back, 120, interval=0.5)
    wait_until("hub1 sees both workers", lambda: 'ttshub_nodes{state="online"} 2\n' in metrics(cluster, 1), 60)


def test_global_rpm_holds_across_hubs(cluster):
    """rate_limit.global_rpm lives in Redis: both hubs together allow at most that many synthesis requests
    in any minute (each hub alone would allow it twice over), and once it is reached both refuse."""
    limit = int(re.search(r"^\s*global_rpm:\s*(\d+)", open(HUB_CONFIG).read(), re.M).group(1))
    refused = {}
    start = len(cluster.sent)
    for _ in range(limit + 200):
        r = cluster.say("Rate.", fmt="wav")
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert r.headers["X-RateLimit-Limit"] == str(limit)
            refused[served_by(r)] = refused.get(served_by(r), 0) + 1
            if len(refused) == 2 and sum(refused.values()) >= 10:
                break
    assert set(refused) == {"hub1", "hub2"}, refused
    ok = sorted(t for t, s in cluster.sent if s == 200)
    # at most `limit` successes in any window of (a little under) a minute, over everything sent to the cluster
    for i, t in enumerate(ok):
        j = bisect.bisect_right(ok, t + 59.0)
        assert j - i <= limit, f"{j - i} requests succeeded within a minute (global_rpm {limit})"
    assert sum(1 for _, s in cluster.sent[start:] if s == 200) > limit // 2


def test_down_leaves_nothing_behind(cluster):
    cluster.compose("down", "-v", timeout=300)
    cs, vs, ns, ps = cluster.leftovers()
    assert cs == [] and vs == [] and ps == [], (cs, vs, ps)
    # podman-compose 1.0.3 (Debian bookworm) does not remove the project network on down; later versions do
    assert ns in ([], [cluster.project + "_default"]), ns
