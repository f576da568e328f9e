"""Seed-2 voice-clone-tts workers behind ttshub: the faithful fake worker (fakes/seed2_worker.py) registers with the
hub in its own shapes (NodeInfo, NodeMetrics without model_loaded, no token: loopback is trusted), starts in standby,
is activated through the hub's command route, gets library voices through its /extract_voice, and serves
/api/synthesize with voice_id. Two or more nodes per test: every request succeeds once a voice is uploaded, a node that
restarts empty gets the voice again, errors map and fall back, commands relay, X-Node-Id names the node."""
import collections
import time

import pytest
import requests

from audio import decoded_seconds, probe
from conftest import wait_until
from fakes import audio_gen as ag
from fakes.seed2_worker import Seed2Worker

TEXT = "Speak with the voice of the library."


def config(engine="xtts", extra_provider="", extra=""):
    return ('data_dir: "@DATA@"\n'
            "log: { level: info, format: json }\n"
            "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
            "cache: { enabled: false }\n"
            "voice_library: { backend: fs, min_seconds: 1, max_seconds: 8 }\n"
            "providers:\n"
            "  - name: s2\n"
            "    type: nodes\n"
            f"    engine: {engine}\n"
            "    protocol: seed2\n"
            "    strategy: round_robin\n"
            "    timeout: 5s\n"
            "    concurrency: 16\n" + extra_provider +
            "registry:\n"
            "  heartbeat_interval: 1s\n"
            "  dead_threshold: 3s\n"
            "  remove_after: 30s\n"
            "  voice_push_concurrency: 2\n"
            "  voice_push_timeout: 5s\n" + extra)


@pytest.fixture
def workers():
    made = []

    def make(hub, engine="xtts", **kw):
        w = Seed2Worker(hub.url, engine=engine, heartbeat_interval=0.2, **kw).start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()


def node(h, nid):
    r = h.get(f"/api/nodes/{nid}")
    return r.json() if r.status_code == 200 else None


def wait_status(h, nid, status, timeout=10):
    return wait_until(lambda: (node(h, nid) or {}).get("status") == status, timeout)


def activate(h, w, command="activate"):
    r = h.post(f"/api/nodes/{w.node_id}/command", json={"command": command})
    assert r.status_code == 200, r.text
    return r.json()


def upload(h, vid, engine="xtts", seconds=2.0, freq=220):
    pcm = ag.pcm("x" * int(seconds * 1000 / 60), f"ref-{freq}", 24000)
    files = {"audio": ("ref.wav", ag.wav(pcm, 24000), "audio/wav")}
    data = {"voice_id": vid, "voice_name": "Voice " + vid, "reference_text": "the words said", "language": "en"}
    if engine:
        data["engine"] = engine
    r = h.post("/api/extract_voice", files=files, data=data)
    assert r.status_code == 201, r.text
    return r.json()


def speak(h, vid, **kw):
    body = {"text": TEXT, "voice_id": vid}
    body.update(kw)
    return h.post("/api/synthesize", json=body)


def held(h, nid):
    return (node(h, nid) or {}).get("library_voices", [])


def test_register_standby_activate_and_every_request_speaks(hub_factory, workers):
    h = hub_factory(config())
    a, b = workers(h), workers(h)
    for w in (a, b):
        assert wait_until(lambda: node(h, w.node_id) is not None)
        n = node(h, w.node_id)
        # registered from the NodeInfo shape: host + port (no url), seed2, standby, no traffic yet
        assert n["protocol"] == "seed2" and n["engine_type"] == "xtts"
        assert n["url"] == f"http://127.0.0.1:{w.port}" and n["status"] == "standby" and n["model_loaded"] is False
        assert n["library_voices"] == []
    # heartbeats (no model_loaded in them) keep them alive; standby takes no traffic
    assert wait_until(lambda: a.heartbeats >= 2 and b.heartbeats >= 2)
    upload(h, "alice")
    r = speak(h, "alice")
    assert r.status_code == 503, r.text
    assert not a.calls("/synthesize") and not b.calls("/synthesize")
    # activate through the hub: the worker answers {"success":true,"status":"ready"}; heartbeats now say ready
    for w in (a, b):
        assert activate(h, w) == {"success": True, "node_id": w.node_id, "command": "activate", "status": "ready"}
        assert w.calls("/command")[-1][2] == {"command": "activate"}
        n = node(h, w.node_id)
        assert n["status"] == "ready" and n["model_loaded"] is True
    # ready nodes got the library's voice pushed (multipart: audio, voice_id, voice_name, reference_text)
    for w in (a, b):
        assert wait_until(lambda: "alice" in w.voices and "alice" in held(h, w.node_id))
        ex = w.calls("/extract_voice")[-1][2]
        assert ex["voice_id"] == "alice" and ex["voice_name"] == "Voice alice"
        assert ex["reference_text"] == "the words said" and ex["audio"] > 44
    served = collections.Counter()
    for i in range(8):
        r = speak(h, "alice", language="en", speed=1.0)
        assert r.status_code == 200, r.text
        assert r.headers["X-Engine"] == "xtts" and r.headers["X-Provider"] == "s2"
        served[r.headers["X-Node-Id"]] += 1
        assert decoded_seconds(r.content, "wav") > 0.5
    assert served == {a.node_id: 4, b.node_id: 4}  # round robin over both
    body = a.calls("/synthesize")[-1][2]
    assert body == {"text": TEXT, "voice_id": "alice", "engine": "xtts", "language": "en", "output_format": "wav",
                    "speed": 1.0, "pitch": 1.0}
    # another format: the node's WAV is converted by the hub
    r = speak(h, "alice", output_format="mp3")
    assert r.status_code == 200 and probe(r.content, "mp3")[0]["codec_name"] == "mp3"
    # the engine named by a seed-2 client is the nodes' engine
    assert speak(h, "alice", engine="xtts").status_code == 200


def test_upload_after_activation_reaches_every_node_before_it_speaks(hub_factory, workers):
    h = hub_factory(config())
    ws = [workers(h) for _ in range(3)]
    for w in ws:
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w, "load_model")
    upload(h, "bob")
    # at upload, every ready node of the engine gets it
    for w in ws:
        assert wait_until(lambda: "bob" in w.voices and "bob" in held(h, w.node_id))
    for _ in range(9):
        r = speak(h, "bob")
        assert r.status_code == 200, r.text
    for w in ws:  # no node ever answered "Voice not found"
        assert all(c[2]["voice_id"] == "bob" for c in w.calls("/synthesize"))
        assert w.error_count == 0
        assert len(w.calls("/synthesize")) == 3
    # a voice for another engine goes to no xtts node
    upload(h, "ov", engine="openvoice", freq=330)
    upload(h, "bob2", freq=300)  # pushes go in order: once this one is in, "ov" would have been too
    for w in ws:
        assert wait_until(lambda: "bob2" in held(h, w.node_id))
        assert "ov" not in held(h, w.node_id) and "ov" not in w.voices


def test_node_restarting_empty_gets_the_voice_again(hub_factory, workers):
    h = hub_factory(config())
    a, b = workers(h), workers(h)
    for w in (a, b):
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w)
    upload(h, "carol")
    for w in (a, b):
        assert wait_until(lambda: "carol" in w.voices)
    pushes = len(b.calls("/extract_voice"))
    b.restart(empty=True)  # same id and port, no voices, standby, registers again
    assert wait_until(lambda: node(h, b.node_id)["status"] == "standby")
    assert held(h, b.node_id) == []
    # while b is in standby, every request goes to a
    for _ in range(4):
        r = speak(h, "carol")
        assert r.status_code == 200 and r.headers["X-Node-Id"] == a.node_id
    activate(h, b)
    assert wait_until(lambda: "carol" in b.voices and "carol" in held(h, b.node_id))
    assert len(b.calls("/extract_voice")) == pushes + 1
    served = collections.Counter(speak(h, "carol").headers.get("X-Node-Id") for _ in range(6))
    assert served == {a.node_id: 3, b.node_id: 3}
    assert b.error_count == 0


def test_voice_lost_on_a_node_is_pushed_on_demand_then_spoken_there(hub_factory, workers):
    h = hub_factory(config())
    a, b = workers(h), workers(h)
    for w in (a, b):
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w)
    upload(h, "dave")
    for w in (a, b):
        assert wait_until(lambda: "dave" in held(h, w.node_id))
    # the node forgets without telling anyone (its disk was wiped): the hub still thinks it holds it
    a.voices.clear()
    before = len(a.calls("/extract_voice"))
    for _ in range(4):
        r = speak(h, "dave")
        assert r.status_code == 200, r.text
    # a answered 500 "Voice not found" once, got the voice again and then spoke it
    assert len(a.calls("/extract_voice")) == before + 1 and "dave" in a.voices
    nf = [c for c in a.calls("/synthesize")]
    assert len(nf) == 3  # the failed one and the two it served
    assert a.error_count == 1
    served = collections.Counter(speak(h, "dave").headers["X-Node-Id"] for _ in range(4))
    assert served == {a.node_id: 2, b.node_id: 2}
    # the hub said why it sent the voice again
    assert "lacks the reference of voice dave" in h.output()


def test_errors_map_fall_back_and_count_in_the_breaker(hub_factory, workers):
    h = hub_factory(config())
    a, b = workers(h), workers(h)
    for w in (a, b):
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w)
    upload(h, "erin")
    for w in (a, b):
        assert wait_until(lambda: "erin" in held(h, w.node_id))
    secret = "CUDA out of memory at /opt/models/xtts secret-path"
    a.fail_next(500, secret, count=1)
    # a fails once with 500 {"detail"}: whichever request meets it goes on to b and succeeds
    for _ in range(2):
        r = speak(h, "erin")
        assert r.status_code == 200, r.text
        assert secret not in r.text
    assert a.error_count == 1 and not a.faults
    # 503 "Model not loaded" from a node the hub has ready (unloaded behind its back, heartbeats still say
    # ready): that node fails, the retry goes to the other
    a.model_loaded = False
    tried = len(a.calls("/synthesize"))
    failures = node(h, a.node_id)["failures"]
    deadline = time.time() + 20  # a is benched for a second after its last failure: poll until it is tried
    while len(a.calls("/synthesize")) == tried and time.time() < deadline:
        r = speak(h, "erin")
        assert r.status_code == 200 and r.headers["X-Node-Id"] == b.node_id, r.text
    assert len(a.calls("/synthesize")) > tried
    assert node(h, a.node_id)["failures"] > failures
    a.model_loaded = True
    # both fail: a real status, our own error body, nothing of theirs (it is in the log)
    a.fail_next(500, secret, count=100)
    b.fail_next(500, secret, count=100)
    r = speak(h, "erin")
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["success"] is False and body["code"] == "upstream_error"
    assert "CUDA" not in r.text and "secret" not in r.text
    assert secret in h.output()
    # node failures count in the provider's breaker like any engine error: it opens (router.breaker: 5 failures,
    # half of the window's requests), and then the hub answers 503 without asking the nodes
    codes = []
    for _ in range(10):
        r = speak(h, "erin")
        codes.append(r.status_code)
        if r.status_code != 502:
            break
    assert codes[-1] == 503 and r.json()["code"] == "upstream_overloaded", codes
    assert "breaker closed -> open" in h.output()
    sent = len(a.calls("/synthesize")) + len(b.calls("/synthesize"))
    assert speak(h, "erin").status_code == 503
    assert len(a.calls("/synthesize")) + len(b.calls("/synthesize")) == sent


def test_commands_relay_and_set_status(hub_factory, workers):
    h = hub_factory(config())
    w = workers(h)
    other = workers(h)
    assert wait_until(lambda: node(h, w.node_id) is not None and node(h, other.node_id) is not None)
    for cmd, status in (("load_model", "ready"), ("unload_model", "standby"), ("activate", "ready"),
                        ("standby", "standby")):
        out = activate(h, w, cmd)
        assert out["command"] == cmd and out["status"] == status
        assert w.calls("/command")[-1][2] == {"command": cmd}  # seed-2 workers take all five as they are
        assert node(h, w.node_id)["status"] == status
        assert node(h, w.node_id)["model_loaded"] is (status == "ready")
    # an unknown command never reaches the node
    n = len(w.calls("/command"))
    r = h.post(f"/api/nodes/{w.node_id}/command", json={"command": "reboot"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_command"
    assert len(w.calls("/command")) == n
    assert h.post("/api/nodes/nope/command", json={"command": "activate"}).status_code == 404
    # stop: the worker unregisters itself
    activate(h, other)
    assert activate(h, other, "stop")["status"] == "offline"
    assert wait_until(lambda: node(h, other.node_id) is None)


def test_delete_voice_forgets_it_on_nodes_and_status_shapes(hub_factory, workers):
    h = hub_factory(config())
    a, b = workers(h), workers(h)
    for w in (a, b):
        assert wait_until(lambda: node(h, w.node_id) is not None)
        activate(h, w)
    upload(h, "fred")
    upload(h, "gina", freq=260)
    for w in (a, b):
        assert wait_until(lambda: {"fred", "gina"} <= set(held(h, w.node_id)))
    lst = h.get("/api/nodes").json()
    assert all(n["protocol"] == "seed2" and set(n["library_voices"]) == {"fred", "gina"} for n in lst["nodes"])
    assert requests.delete(h.url + "/api/voices/fred", timeout=10).status_code == 200
    for w in (a, b):
        assert held(h, w.node_id) == ["gina"]
    assert h.get("/api/voices/fred").status_code == 404
    # a plain voice name goes to the workers as voice_id (voices made on them keep working), but only a plain id:
    # the worker joins it to its voices folder
    sent = len(a.calls("/synthesize")) + len(b.calls("/synthesize"))
    for bad in ("../../etc/passwd", "a/b", "x.pt", "v" * 65):
        r = speak(h, bad)
        assert r.status_code == 400, (bad, r.text)
    assert len(a.calls("/synthesize")) + len(b.calls("/synthesize")) == sent
    # seed-2 workers have no call to delete a voice: the workers keep their copies, the hub no longer pushes it
    assert "fred" in a.voices and "fred" in b.voices
    assert speak(h, "gina").status_code == 200


def test_a_ttshub_provider_does_not_route_to_seed2_nodes(hub_factory, workers):
    extra = ("  - name: plain\n"
             "    type: nodes\n"
             "    engine: openvoice\n"
             "    timeout: 5s\n")
    h = hub_factory(config(engine="openvoice", extra_provider=extra))
    w = workers(h, engine="openvoice")
    assert wait_until(lambda: node(h, w.node_id) is not None)
    activate(h, w)
    upload(h, "hank", engine="openvoice")
    assert wait_until(lambda: "hank" in held(h, w.node_id))
    for _ in range(3):
        r = speak(h, "hank")
        assert r.status_code == 200 and r.headers["X-Provider"] == "s2" and r.headers["X-Node-Id"] == w.node_id
    # the plain (ttshub protocol) provider has no node to speak to: only the seed2 one ever sends
    r = h.post("/api/synthesize", json={"text": TEXT, "voice_id": "hank", "engine": "plain"})
    assert r.status_code == 503, r.text
    assert all("voice_id" in c[2] for c in w.calls("/synthesize"))
