"""Library voices through every clone-capable engine kind: extract -> speak -> delete against each kind's
fake, which records the reference it received (it must decode to the stored audio, with the transcript);
uploads happen once per provider, an engine or node that forgot gets it again, a delete reaches the engine."""
import base64
import os
import tempfile
import time

import pytest
import requests

from audio import cosyvoice_got, decoded_seconds
from fakes.engines import FakeEngine, wav_info
from test_voices import extract, make_audio

TEXT_REF = "the words said in the reference"


def wait_until(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# kind -> (fake kind, fake options, extra provider lines, engine receives the transcript)
KINDS = {
    "cosyvoice": ("cosyvoice", {}, "", True),
    "fish": ("fish", {}, "", True),
    "openvoice": ("openvoice", {}, "", False),
    "elevenlabs": ("elevenlabs", {"api_key": "xi-test"}, "    api_key_env: TEST_UPSTREAM_KEY\n", False),
    "gpt_sovits": ("gpt_sovits", {"ref_dir_engine": "/engine/refs"},
                   "    ref_dir: \"@REFS@\"\n    ref_dir_engine: /engine/refs\n", True),
    "xtts": ("xtts", {}, "    ref_dir: \"@REFS@\"\n", False),
    "nodes": ("node", {}, "", True),
}


def config(kind, url, extra, refs):
    return ('data_dir: "@DATA@"\n'
            "log: { level: info, format: json }\n"
            "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
            "voice_library: { backend: fs, min_seconds: 2, max_seconds: 30 }\n"
            "providers:\n"
            "  - { name: local, type: espeak }\n"
            f"  - name: clone\n    type: {kind}\n    base_url: \"{url}\"\n    timeout: 5s\n"
            + extra.replace("@REFS@", refs))


@pytest.fixture
def refs_dir():
    d = tempfile.mkdtemp(prefix="ttshub-refs-")
    yield d
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)


def same_audio(got, stored):
    a, b = wav_info(got), wav_info(stored)
    return a is not None and a == b


def same_reference(kind, rec, stored):
    """The reference an engine received is the stored one, in the form that kind gets: cosyvoice the compact
    form (it resamples to 16 kHz itself), every other kind the stored WAV."""
    return cosyvoice_got(rec, stored) if kind == "cosyvoice" else same_audio(rec["audio"], stored)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_extract_speak_delete(kind, hub_factory, refs_dir):
    fkind, fopts, extra, gets_text = KINDS[kind]
    if kind in ("gpt_sovits", "xtts"):
        fopts = dict(fopts, ref_dir=refs_dir)
    fake = FakeEngine(fkind, **fopts).start()
    try:
        h = hub_factory(config(kind, fake.url, extra, refs_dir), env={"TEST_UPSTREAM_KEY": "xi-test"})
        r = extract(h, make_audio("mp3", 3.0), "mp3", voice_id="clone1", voice_name="Clone one",
                    reference_text=TEXT_REF, language="en")
        assert r.status_code == 201, r.text
        stored = h.get("/api/voices/clone1/audio").content
        assert wav_info(stored)["rate"] == 24000

        s = h.post("/api/synthesize", json={"text": "Speak in the cloned voice.", "voice_id": "clone1"})
        assert s.status_code == 200, s.text
        assert s.headers["X-Provider"] == "clone"
        assert decoded_seconds(s.content, "wav") > 0.5
        refs = fake.references
        assert len(refs) == 1, refs
        assert same_reference(kind, refs[0], stored)
        if kind == "cosyvoice":   # a third of the WAV's bytes or less on every request
            assert refs[0]["filename"] == "prompt.flac" and len(refs[0]["audio"]) < len(stored) / 2
        if gets_text:
            assert refs[0]["text"] == TEXT_REF

        # the OpenAI protocol speaks it too (a library id is looked up before the configured voices)
        o = h.post("/v1/audio/speech", json={"model": "tts-1", "input": "Another sentence here.", "voice": "clone1",
                                              "response_format": "wav"})
        assert o.status_code == 200, o.text
        # inline kinds get it with every request and file kinds read it every time (written once);
        # uploads and nodes get it once
        every_time = kind in ("cosyvoice", "fish", "gpt_sovits", "xtts")
        assert len(fake.references) == (2 if every_time else 1)
        if kind in ("gpt_sovits", "xtts"):
            assert len(os.listdir(refs_dir)) == 1

        d = requests.delete(h.url + "/api/voices/clone1", timeout=10)
        assert d.status_code == 200, d.text
        if kind == "elevenlabs":
            assert wait_until(lambda: len(fake.drops) == 1)
            assert fake.drops[0] == refs[0]["voice_id"]
        if kind in ("gpt_sovits", "xtts"):
            assert wait_until(lambda: os.listdir(refs_dir) == [])
        assert h.get("/api/voices/clone1").status_code == 404
    finally:
        fake.stop()


@pytest.mark.parametrize("kind", ["openvoice", "nodes", "xtts"])
def test_engine_that_forgot_gets_the_reference_again(kind, hub_factory, refs_dir):
    fkind, fopts, extra, _ = KINDS[kind]
    if kind == "xtts":
        fopts = dict(fopts, ref_dir=refs_dir)
    fake = FakeEngine(fkind, **fopts).start()
    try:
        h = hub_factory(config(kind, fake.url, extra, refs_dir))
        assert extract(h, make_audio("wav", 3.0), "wav", voice_id="v2", reference_text=TEXT_REF).status_code == 201
        assert h.post("/api/synthesize", json={"text": "First one.", "voice_id": "v2"}).status_code == 200
        # an engine or node restart (or someone clearing the shared folder)
        if kind == "xtts":
            for n in os.listdir(refs_dir):
                os.unlink(os.path.join(refs_dir, n))
        else:
            fake.forget()
        s = h.post("/api/synthesize", json={"text": "Second one, after the engine forgot.", "voice_id": "v2"})
        assert s.status_code == 200, s.text
        assert len(fake.references) == 2
        assert same_audio(fake.references[1]["audio"], h.get("/api/voices/v2/audio").content)
        # nodes: every miss is a re-send and nothing is made on the engine; the others made it twice and
        # sent one request again
        m = h.get("/metrics").text
        resends, made = (2, 0) if kind == "nodes" else (1, 2)
        assert f'ttshub_reference_resends_total{{provider="clone"}} {resends}' in m, m
        assert f'ttshub_reference_uploads_total{{provider="clone",result="ok"}} {made}' in m, m
        assert 'ttshub_reference_uploads_total{provider="clone",result="failed"} 0' in m, m
    finally:
        fake.stop()


def test_client_paths_never_reach_gpt_sovits_or_xtts(hub_factory, refs_dir):
    """Issue 12: a client's voice string is never an engine-side path; the fake records what it got."""
    gs = FakeEngine("gpt_sovits").start()
    xt = FakeEngine("xtts").start()
    try:
        h = hub_factory("providers:\n"
                        f"  - {{ name: gs, type: gpt_sovits, base_url: \"{gs.url}\", priority: 1,"
                        " voices: { alice: /srv/refs/alice.wav } }\n"
                        f"  - {{ name: xt, type: xtts, base_url: \"{xt.url}\", priority: 2 }}\n"
                        "router: { strategy: priority, fallback: false }\n")
        for voice in ("../../etc/passwd", "/etc/passwd", "/etc/passwd.wav", "..", "a/b.wav"):
            r = h.post(data={"input": "hello", "voice": voice, "response_format": "wav"})
            assert r.status_code == 400, (voice, r.status_code, r.text)
        assert gs.calls == 0 and xt.calls == 0
        # configured voices still work
        r = h.post(data={"input": "hello", "voice": "alice", "response_format": "wav"})
        assert r.status_code == 200, r.text
        body = gs.requests[-1][3]
        assert b"/srv/refs/alice.wav" in body
    finally:
        gs.stop()
        xt.stop()


def test_node_reference_resend_is_base64_of_the_stored_wav(hub_factory):
    node = FakeEngine("node").start()
    try:
        h = hub_factory(config("nodes", node.url, "", ""))
        assert extract(h, make_audio("wav", 2.5), "wav", voice_id="n1", reference_text="hi").status_code == 201
        assert h.post("/api/synthesize", json={"text": "To the node.", "voice_id": "n1"}).status_code == 200
        bodies = [b for m, p, hd, b in node.requests if p == "/synthesize"]
        assert len(bodies) == 2          # sha256 only, then again with the bytes
        import json
        first, second = json.loads(bodies[0]), json.loads(bodies[1])
        stored = h.get("/api/voices/n1/audio").content
        assert "reference_audio" not in first and first["reference_sha256"] == second["reference_sha256"]
        assert base64.b64decode(second["reference_audio"]) == stored
    finally:
        node.stop()


# ---- real `ttshub worker` nodes behind a real hub ----------------------------------------------------

TOKEN = "clone-cluster-token-7"


def start_worker(hub_factory, gateway, node_id, engine, engine_url, *more, workdir=None, port=None):
    from conftest import free_port
    port = port or free_port()
    args = ["--engine", engine, "--engine-url", engine_url, "--gateway", gateway, "--node-id", node_id,
            "--advertise", f"http://127.0.0.1:{port}", *more]
    return hub_factory(None, command="worker", env={"TTSHUB_CLUSTER_TOKEN": TOKEN}, extra_args=args, port=port,
                       workdir=workdir)


def nodes_hub(hub_factory, engine):
    return hub_factory('data_dir: "@DATA@"\n'
                       "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
                       "cache: { enabled: false }\n"
                       "voice_library: { backend: fs, min_seconds: 2, max_seconds: 30 }\n"
                       f"providers:\n  - {{ name: pool, type: nodes, engine: {engine}, timeout: 10s }}\n"
                       "registry: { heartbeat_interval: 1s, dead_threshold: 3s, remove_after: 10s }\n",
                       env={"TTSHUB_CLUSTER_TOKEN": TOKEN})


def wait_nodes(hub, n):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert wait_until(lambda: hub.get("/api/nodes", headers=auth).json()["count"] >= n, 15)


def test_real_worker_cosyvoice_gets_the_reference_once_and_after_a_restart(hub_factory):
    cosy = FakeEngine("cosyvoice").start()
    try:
        hub = nodes_hub(hub_factory, "cosyvoice")
        wdir = tempfile.mkdtemp(prefix="ttshub-worker-")
        w = start_worker(hub_factory, hub.url, "w-cosy", "cosyvoice", cosy.url, workdir=wdir)
        wait_nodes(hub, 1)
        assert extract(hub, make_audio("wav", 3.0), "wav", voice_id="wv", reference_text=TEXT_REF).status_code == 201
        stored = hub.get("/api/voices/wv/audio").content
        for i in range(3):
            s = hub.post("/api/synthesize", json={"text": f"Through a worker, take {i}.", "voice_id": "wv"})
            assert s.status_code == 200, s.text
            assert s.headers["X-Provider"] == "pool"
        # the worker speaks it through its engine's own kind code: cosyvoice gets it inline every time
        assert len(cosy.references) == 3
        assert all(cosyvoice_got(r, stored) and r["text"] == TEXT_REF for r in cosy.references)
        # the worker kept it in its store: the bytes crossed to the worker once
        wlog = [x for x in w.log_lines() if "storing reference" in x.get("msg", "")]
        assert len(wlog) == 1, wlog
        # a worker that restarts with an empty store gets the reference again, and the request succeeds
        port = w.port
        assert w.stop() == 0
        import shutil
        shutil.rmtree(os.path.join(wdir, "data"), ignore_errors=True)
        w2 = start_worker(hub_factory, hub.url, "w-cosy", "cosyvoice", cosy.url, port=port)
        wait_nodes(hub, 1)
        s = hub.post("/api/synthesize", json={"text": "After the restart.", "voice_id": "wv"})
        assert s.status_code == 200, s.text
        assert len([x for x in w2.log_lines() if "storing reference" in x.get("msg", "")]) == 1
    finally:
        cosy.stop()


def test_real_worker_xtts_writes_into_the_engine_speaker_folder(hub_factory, refs_dir):
    xt = FakeEngine("xtts", ref_dir=refs_dir).start()
    try:
        hub = nodes_hub(hub_factory, "xtts")
        start_worker(hub_factory, hub.url, "w-xtts", "xtts", xt.url, "--ref-dir", refs_dir)
        wait_nodes(hub, 1)
        assert extract(hub, make_audio("wav", 3.0), "wav", voice_id="wx", reference_text=TEXT_REF).status_code == 201
        s = hub.post("/api/synthesize", json={"text": "Worker and xtts.", "voice_id": "wx"})
        assert s.status_code == 200, s.text
        assert len(os.listdir(refs_dir)) == 1
        assert same_audio(xt.references[0]["audio"], hub.get("/api/voices/wx/audio").content)
    finally:
        xt.stop()


def test_worker_checks_what_it_is_sent(hub_factory):
    import hashlib
    cosy = FakeEngine("cosyvoice").start()
    try:
        from test_worker import Gateway
        g = Gateway()
        w = start_worker(hub_factory, g.url, "w-chk", "cosyvoice", cosy.url)
        from fakes import audio_gen as ag
        wav = ag.wav(ag.synth("a reference of two seconds", "v", "pcm", 24000), 24000)   # what a library stores
        sha = hashlib.sha256(wav).hexdigest()
        base = {"text": "Check me.", "voice": "v", "format": "wav", "reference_sha256": sha, "reference_text": "t"}
        bad = [dict(base, reference_sha256="../../etc/passwd"), dict(base, reference_sha256=sha.upper()),
               dict(base, reference_audio="***not base64***"),
               dict(base, reference_audio=base64.b64encode(wav[:-4]).decode()),
               dict(base, reference_sha256=hashlib.sha256(b"RIFF0000WAVEjunk").hexdigest(),
                    reference_audio=base64.b64encode(b"RIFF0000WAVEjunk").decode()),
               dict(base, reference_text=7),
               dict(base, reference_sha256=hashlib.sha256(make_audio("wav", 2.0)).hexdigest(),
                    reference_audio=base64.b64encode(make_audio("wav", 2.0)).decode())]   # stereo 44.1 kHz
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for body in bad:
            r = w.post("/synthesize", json=body, headers=auth)
            assert r.status_code == 400 and r.json()["success"] is False, (body.get("reference_sha256"), r.text)
        r = w.post("/synthesize", json=base, headers=auth)
        assert r.status_code == 409 and r.json()["code"] == "reference_missing"
        assert cosy.calls == 0
        r = w.post("/synthesize", json=dict(base, reference_audio=base64.b64encode(wav).decode()), headers=auth)
        assert r.status_code == 200 and r.content[:4] == b"RIFF", r.text
        assert w.post("/synthesize", json=base, headers=auth).status_code == 200     # held now
        assert len(cosy.references) == 2 and cosy.references[0]["text"] == "t"
        g.stop()
    finally:
        cosy.stop()
