"""`ttshub worker` behind the seed-2 gateway (voice-clone-tts), played by its faithful fake
(fakes/seed2_gateway.py): registration in NodeInfo's shape (found out from the gateway's 422, or told),
heartbeats, /synthesize with voice_id through the gateway (real espeak audio, decoded), registering again when
the gateway forgets the node, load_model / unload_model, /extract_voice then speaking that voice_id."""
import array
import json
import statistics
import subprocess

import pytest
import requests

from audio import decoded_seconds, probe
from conftest import free_port, wait_until
from fakes.engines import FakeEngine
from fakes.seed2_gateway import Seed2Gateway
from test_voices import make_audio


@pytest.fixture
def gw():
    g = Seed2Gateway(heartbeat_interval=0.5, dead_threshold=30).start()
    yield g
    g.stop()


def start_worker(hub_factory, gateway_url, *more, engine=("--engine", "espeak", "--engine-type", "xtts"),
                 token=False, env=None):
    port = free_port()
    args = [*engine, "--gateway", gateway_url, "--advertise", f"http://127.0.0.1:{port}",
            "--heartbeat-interval", "0.3", *more]
    if not token:
        args.append("--no-token")
    return hub_factory(None, command="worker", env=env or {}, extra_args=args, port=port)


def registered_node(gw, timeout=10):
    assert wait_until(lambda: len(gw.nodes) == 1, timeout), gw.calls[-5:]
    return gw.node(next(iter(gw.nodes)))


def gsynth(gw, **body):
    return requests.post(gw.url + "/api/synthesize", json=body, timeout=30)


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


def test_registers_heartbeats_and_speaks_through_the_gateway(hub_factory, gw):
    w = start_worker(hub_factory, gw.url)
    node = registered_node(gw)
    # auto: the first registration (ttshub's words) got FastAPI's 422; the second is NodeInfo
    regs = gw.of("POST", "/api/nodes/register")
    assert regs[0][2]["status"] == "online" and regs[-1][2]["status"] == "ready"
    assert node["engine_type"] == "xtts" and node["host"] == "127.0.0.1" and node["port"] == int(w.url.rsplit(":")[-1])
    assert node["status"] == "ready" and node["model_loaded"] is True
    assert wait_until(lambda: w.get("/info").json()["registered"])
    info = w.get("/info").json()
    assert info["gateway_protocol"] == "seed2" and info["registered_as"] == "xtts"
    assert info["status"] == "ready" and info["host"] == "127.0.0.1" and info["port"] == node["port"]
    # NodeMetrics heartbeats: node_id in the body, seed-2 status words, counted
    nid = node["node_id"]
    assert wait_until(lambda: len(gw.of("POST", f"/api/nodes/{nid}/heartbeat")) >= 3)
    hb = gw.of("POST", f"/api/nodes/{nid}/heartbeat")[-1][2]
    assert hb["node_id"] == nid and hb["status"] == "ready" and hb["current_concurrent"] == 0
    # /api/synthesize with a voice_id -> the node's /synthesize -> real espeak WAV, as the gateway answers it
    r = gsynth(gw, text="The seed two gateway speaks through a ttshub worker.", voice_id="en-us", language="en")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/wav"
    assert r.headers["X-Node-Id"] == nid and r.headers["X-Engine"] == "xtts"
    st, _ = probe(r.content, "wav")
    assert st["codec_name"] == "pcm_s16le" and st["channels"] == 1
    assert decoded_seconds(r.content, "wav") > 1.0
    # the gateway's defaults (language "zh", output_format "wav", pitch 1.0) are accepted as they come
    r = gsynth(gw, text="Defaults from the gateway.", voice_id="en")
    assert r.status_code == 200 and decoded_seconds(r.content, "wav") > 0.5
    # speed and pitch reach espeak
    slow = gsynth(gw, text="Speed and pitch are honoured here.", voice_id="en-us", speed=0.5)
    fast = gsynth(gw, text="Speed and pitch are honoured here.", voice_id="en-us", speed=2.0)
    assert decoded_seconds(slow.content, "wav") > 1.5 * decoded_seconds(fast.content, "wav")
    low = gsynth(gw, text="Speed and pitch are honoured here.", voice_id="en-us", pitch=0.5)
    high = gsynth(gw, text="Speed and pitch are honoured here.", voice_id="en-us", pitch=2.0)
    assert low.status_code == high.status_code == 200
    assert median_f0(high.content) > 1.5 * median_f0(low.content)  # espeak's pitch 100 vs 25
    # the gateway's batch sends only {text, voice_id, language} to the node
    r = requests.post(gw.url + "/api/batch_synthesize", timeout=60,
                      json={"texts": ["First of two.", "Second of two."], "voice_id": "en-us", "language": "en"})
    assert r.status_code == 200 and r.json()["succeeded"] == 2 and r.json()["failed"] == 0, r.text
    assert all(x["success"] and x["size"] > 20000 for x in r.json()["results"])
    # the gateway's quirk: a node's failure is HTTP 200 {"success": false, "message": "Node error: ..."}
    r = gsynth(gw, text="No such voice.", voice_id="no-such-voice-anywhere")
    assert r.status_code == 200 and r.json()["success"] is False
    assert r.json()["message"].startswith("Node error: ") and "no-such-voice-anywhere" in r.json()["message"]
    # the node itself keeps real statuses
    r = w.post("/synthesize", json={"text": "x", "voice_id": "en", "pitch": 9})
    assert r.status_code == 400 and r.json()["success"] is False
    # SIGTERM: the node unregisters (DELETE) and the gateway forgets it
    w.stop()
    assert gw.of("DELETE", f"/api/nodes/{nid}") and gw.nodes == {}


def test_registers_again_when_the_gateway_forgets_it(hub_factory, gw):
    start_worker(hub_factory, gw.url, "--gateway-protocol", "seed2", "--node-id", "tw-1")
    node = registered_node(gw)
    assert node["node_id"] == "tw-1"
    # told seed2: no ttshub-shaped attempt first
    assert all(c[2]["status"] == "ready" for c in gw.of("POST", "/api/nodes/register"))
    n_regs = len(gw.of("POST", "/api/nodes/register"))
    gw.forget()  # a gateway restart: heartbeats now get 200 {"success": false}
    assert wait_until(lambda: gw.node("tw-1") is not None, 10), gw.calls[-5:]
    assert len(gw.of("POST", "/api/nodes/register")) == n_regs + 1
    r = gsynth(gw, text="Back after the gateway restarted.", voice_id="en-us")
    assert r.status_code == 200 and r.headers["X-Node-Id"] == "tw-1"
    assert decoded_seconds(r.content, "wav") > 0.5


def test_load_and_unload_commands(hub_factory, gw):
    w = start_worker(hub_factory, gw.url)
    nid = registered_node(gw)["node_id"]

    def command(name):
        return requests.post(f"{gw.url}/api/nodes/{nid}/command", json={"command": name}, timeout=30)

    assert command("unload_model").json() == {"success": True}
    assert w.get("/info").json()["model_loaded"] is False
    # the node refuses work; its heartbeat says standby, so the gateway stops choosing it
    r = w.post("/synthesize", json={"text": "not now", "voice_id": "en"})
    assert r.status_code == 503 and "Model not loaded" in r.json()["message"]
    assert wait_until(lambda: gw.node(nid)["status"] == "standby")
    r = gsynth(gw, text="Nobody is ready.", voice_id="en")
    assert r.status_code == 200 and r.json() == {"success": False, "message": "No available node for engine xtts",
                                                 "audio_url": None, "audio_size": 0, "duration_ms": 0.0,
                                                 "engine_used": None, "node_used": None}
    # extract_voice is refused too while unloaded (a seed-2 worker's 503)
    r = w.post("/extract_voice", files={"audio": ("a.wav", make_audio("wav", 2.0), "audio/wav")})
    assert r.status_code == 503
    # load_model: the node registers again so the gateway, which takes model_loaded only from
    # registrations, routes to it
    n_regs = len(gw.of("POST", "/api/nodes/register"))
    assert command("load_model").json() == {"success": True}
    assert wait_until(lambda: len(gw.of("POST", "/api/nodes/register")) > n_regs)
    assert gw.of("POST", "/api/nodes/register")[-1][2]["model_loaded"] is True
    assert wait_until(lambda: gw.node(nid)["status"] == "ready" and gw.node(nid)["model_loaded"])
    r = gsynth(gw, text="Loaded again.", voice_id="en-us")
    assert r.status_code == 200 and decoded_seconds(r.content, "wav") > 0.3
    # activate / standby are the same pair, in any case; params are accepted; unknown commands refused
    r = w.post("/command", json={"command": "STANDBY", "params": {}})
    assert r.json() == {"success": True, "status": "standby"}
    assert w.post("/command", json={"command": "activate"}).json() == {"success": True, "status": "ready"}
    r = w.post("/command", json={"command": "reboot"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_command"
    assert command("reboot").json() == {"success": False}


def test_extract_voice_then_synthesize_with_it(hub_factory, gw):
    with FakeEngine("cosyvoice").start() as cosy:
        w = start_worker(hub_factory, gw.url,
                         engine=("--engine", "cosyvoice", "--engine-url", cosy.url, "--engine-type", "xtts"))
        registered_node(gw)
        ref = make_audio("mp3", 3.0, freq=330)
        files = {"audio": ("amy.mp3", ref, "audio/mpeg")}
        r = requests.post(gw.url + "/api/extract_voice", files=files,
                          data={"voice_id": "amy", "voice_name": "Amy"}, timeout=30)
        assert r.status_code == 200 and r.json() == {"success": True, "message": "", "voice_id": "amy",
                                                     "voice_name": "Amy", "engine": "xtts"}, r.text
        r = gsynth(gw, text="Speak in Amy's voice.", voice_id="amy", language="en")
        assert r.status_code == 200, r.text
        assert decoded_seconds(r.content, "wav") > 0.3
        # the engine got the stored reference (the upload decoded and normalised to mono) in the form it uses:
        # 16 kHz FLAC
        assert cosy.references and cosy.references[-1]["via"] == "inline"
        got = cosy.references[-1]
        assert got["format"] == "flac" and got["rate"] == 16000 and abs(got["frames"] / 16000 - 3.0) < 0.1
        first = got["pcm"]
        # the same id again replaces the voice (a seed-2 worker overwrites voices/{id}/)
        other = make_audio("wav", 2.0, freq=500)
        r = requests.post(gw.url + "/api/extract_voice", files={"audio": ("amy.wav", other, "audio/wav")},
                          data={"voice_id": "amy"}, timeout=30)
        assert r.json()["success"] is True, r.text
        assert gsynth(gw, text="Amy again.", voice_id="amy").status_code == 200
        again = cosy.references[-1]
        assert again["pcm"] != first and abs(again["frames"] / 16000 - 2.0) < 0.1
        # no voice_id: the node makes one; the gateway passes it back
        r = requests.post(gw.url + "/api/extract_voice", files={"audio": ("x.wav", other, "audio/wav")}, timeout=30)
        made = r.json()["voice_id"]
        assert r.json()["success"] is True and made.startswith("v_")
        assert gsynth(gw, text="A made id.", voice_id=made).status_code == 200
        # what the node refuses, the gateway answers as HTTP 200 success:false with the node's message
        for data, files, why in (
                ({"voice_id": "../etc"}, {"audio": ("a.wav", other, "audio/wav")}, "invalid_voice_id"),
                ({"voice_id": "r" + "0" * 63}, {"audio": ("a.wav", other, "audio/wav")}, "invalid_voice_id"),
                ({"voice_id": "quiet"}, {"audio": ("a.wav", make_audio("wav", 2.0, silent=True), "audio/wav")},
                 "audio_silent"),
                ({"voice_id": "junk"}, {"audio": ("a.wav", b"not audio at all" * 10, "audio/wav")},
                 "unsupported_audio")):
            r = requests.post(gw.url + "/api/extract_voice", files=files, data=data, timeout=30)
            assert r.status_code == 200 and r.json()["success"] is False, r.text
            assert why in r.json()["message"], r.text
        # the node's own answers are real statuses
        r = w.post("/extract_voice", files={"audio": ("a.wav", b"RIFF", "audio/wav")}, data={"voice_id": "../x"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_voice_id"
        r = w.post("/extract_voice", data={"voice_id": "noaudio"})
        assert r.status_code == 415
        r = w.post("/extract_voice", files={"other": ("a.wav", other, "audio/wav")})
        assert r.status_code == 400 and r.json()["code"] == "missing_audio"
        w.stop()


def test_espeak_node_refuses_extract_voice(hub_factory, gw):
    w = start_worker(hub_factory, gw.url)
    registered_node(gw)
    r = requests.post(gw.url + "/api/extract_voice", files={"audio": ("a.wav", make_audio("wav", 2.0), "audio/wav")},
                      data={"voice_id": "amy"}, timeout=30)
    assert r.status_code == 200 and r.json()["success"] is False and "engine_cannot_clone" in r.json()["message"]
    assert w.post("/extract_voice", files={"audio": ("a.wav", b"x", "audio/wav")}).status_code == 501


def test_token_rules_behind_a_seed2_gateway(hub_factory, gw, tmp_path):
    from conftest import BIN
    # told seed2 with the token required: refused at start (the gateway could never call the node)
    port = free_port()
    p = subprocess.run([BIN, "worker", "--engine", "espeak", "--engine-type", "xtts", "--gateway", gw.url,
                        "--listen", f"127.0.0.1:{port}", "--advertise", f"http://127.0.0.1:{port}",
                        "--gateway-protocol", "seed2"], env={"TTSHUB_CLUSTER_TOKEN": "tok-1", "PATH": "/usr/bin"},
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 2 and "--no-token" in p.stderr
    # auto with the token required: it finds out, and does not register a node the gateway cannot use
    w = start_worker(hub_factory, gw.url, token=True, env={"TTSHUB_CLUSTER_TOKEN": "tok-1"})
    assert wait_until(lambda: "not registering" in w.output(), 10), w.output()[-2000:]
    assert gw.nodes == {}
    assert w.get("/info").status_code == 401  # the node's routes still need the token
    info = w.get("/info", headers={"Authorization": "Bearer tok-1"}).json()
    assert info["gateway_protocol"] == "seed2" and info["registered"] is False


def test_engine_type_a_seed2_gateway_does_not_know(hub_factory, gw):
    # espeak without --engine-type: the gateway's 422 names the field; the log says what to do
    w = start_worker(hub_factory, gw.url, engine=("--engine", "espeak"))
    assert wait_until(lambda: "--engine-type" in w.output(), 10), w.output()[-2000:]
    assert gw.nodes == {}
    body = gw.of("POST", "/api/nodes/register")[-1][2]
    assert body["engine_type"] == "espeak"
    assert json.dumps(body)  # recorded as sent


def test_two_workers_share_the_gateway_round_robin(hub_factory, gw):
    a = start_worker(hub_factory, gw.url, "--node-id", "rr-a")
    b = start_worker(hub_factory, gw.url, "--node-id", "rr-b")
    # both registered and available (status ready, model loaded), as the gateway's pick requires
    assert wait_until(lambda: all(n in gw.nodes and gw.node(n)["status"] == "ready" and gw.node(n)["model_loaded"]
                                  for n in ("rr-a", "rr-b")))
    ids = []
    for i in range(4):
        r = gsynth(gw, text=f"Round robin, request {i}.", voice_id="en-us")
        assert r.status_code == 200 and decoded_seconds(r.content, "wav") > 0.3
        ids.append(r.headers["X-Node-Id"])
    assert ids[0] != ids[1] and ids[0::2] == [ids[0]] * 2 and ids[1::2] == [ids[1]] * 2
    # one node unloaded: every request goes to the other
    assert requests.post(f"{gw.url}/api/nodes/rr-a/command", json={"command": "unload_model"}, timeout=30).json()["success"]
    assert wait_until(lambda: gw.node("rr-a")["status"] == "standby")
    assert {gsynth(gw, text="Only b.", voice_id="en").headers["X-Node-Id"] for _ in range(3)} == {"rr-b"}
    for w in (a, b):
        w.stop()
    assert gw.nodes == {}


def test_the_fake_gateway_answers_in_seed2_shapes(gw):
    """The fake's own shapes, as FastAPI + pydantic and app.py answer them."""
    def post(path, body):
        return requests.post(gw.url + path, json=body, timeout=10)

    r = post("/api/nodes/register", {"engine_type": "espeak", "host": "127.0.0.1", "port": 1, "status": "online"})
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("body", "engine_type"), ("body", "status")}
    r = post("/api/nodes/register", {"engine_type": "xtts", "port": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "missing"
    r = post("/api/nodes/register", {"engine_type": "gpt-sovits", "host": "127.0.0.1", "port": 1})
    nid = r.json()["node_id"]
    assert r.status_code == 200 and r.json() == {"success": True, "node_id": nid} and len(nid) == 8
    assert gw.node(nid)["status"] == "offline" and gw.node(nid)["model_loaded"] is False  # NodeInfo defaults
    assert post(f"/api/nodes/{nid}/heartbeat", {"status": "ready"}).status_code == 422  # node_id is required
    assert post(f"/api/nodes/{nid}/heartbeat", {"node_id": nid, "status": "ready", "model_loaded": True}).json() == \
        {"success": True}
    assert gw.node(nid)["status"] == "ready" and gw.node(nid)["model_loaded"] is False  # never from a heartbeat
    assert post("/api/nodes/nobody/heartbeat", {"node_id": "nobody"}).json() == {"success": False}
    r = post("/api/nodes/nobody/command", {"command": "load_model"})
    assert r.status_code == 404 and r.json() == {"detail": "Node not found"}
    r = post("/api/synthesize", {"text": "x", "voice_id": "v", "engine": "gpt-sovits"})
    assert r.status_code == 200 and r.json()["success"] is False
    assert r.json()["message"] == "No available node for engine gpt-sovits"
    assert post("/api/synthesize", {"text": "", "voice_id": "v"}).status_code == 422
    assert post("/api/synthesize", {"text": "x", "voice_id": "v", "pitch": 3}).status_code == 422
    assert requests.delete(f"{gw.url}/api/nodes/{nid}", timeout=10).json() == {"success": True}
    assert requests.delete(f"{gw.url}/api/nodes/{nid}", timeout=10).json() == {"success": False}
