"""The voice library: extract, list, get, audio, patch, speak, delete; every bad upload; tenants; kill -9
durability; two hubs sharing the library through a real redis-server."""
import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from audio import cosyvoice_got, probe, decoded_seconds
from conftest import Hub
from fakes.engines import FakeEngine, COSY_SPEAKERS

IDS = ["v_wav", "v_mp3", "v_ogg", "v_flac", "v_m4a", "v_webm", "spk", "mine", "shared", "dur"]


def sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


def make_audio(fmt, seconds=3.0, silent=False, freq=220):
    """A reference in one container, as FFmpeg (or a browser recorder) makes it."""
    src = f"anullsrc=r=44100:cl=stereo:d={seconds}" if silent else \
        f"sine=frequency={freq}:sample_rate=44100:duration={seconds}"
    args = {
        "wav": ["-ac", "2", "-c:a", "pcm_s16le", "-f", "wav"],
        "mp3": ["-ac", "2", "-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
        "ogg": ["-ac", "1", "-ar", "48000", "-c:a", "libopus", "-f", "ogg"],
        "flac": ["-ac", "1", "-c:a", "flac", "-f", "flac"],
        "m4a": ["-ac", "2", "-c:a", "aac", "-f", "ipod"],
        "webm": ["-ac", "1", "-ar", "48000", "-c:a", "libopus", "-f", "webm"],
    }[fmt]
    with tempfile.NamedTemporaryFile(suffix="." + fmt) as f:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src] + args + [f.name], check=True)
        return open(f.name, "rb").read()


MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg", "flac": "audio/flac", "m4a": "audio/mp4",
        "webm": "audio/webm"}


def extract(hub, data, fmt="wav", headers=None, field="audio", **fields):
    files = {field: ("ref." + fmt, data, MIME.get(fmt, "application/octet-stream"))}
    return hub.post("/api/extract_voice", files=files, data=fields, headers=headers or {})


def config(cosy=None, extra="", auth="", backend="fs", redis_port=None):
    text = ('data_dir: "@DATA@"\n'
            "log: { level: info, format: json }\n"
            "limits: { max_upload: 600KiB }\n"
            "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
            f"voice_library: {{ backend: {backend}, min_seconds: 2, max_seconds: 8, max_per_tenant: 3 }}\n")
    if redis_port:
        text += f'redis: {{ url: "redis://127.0.0.1:{redis_port}/0", prefix: "vt:", timeout: 2s }}\n'
    text += "providers:\n  - { name: local, type: espeak }\n"
    if cosy is not None:
        text += f'  - {{ name: cosy, type: cosyvoice, base_url: "{cosy.url}" }}\n'
    return text + auth + extra


@pytest.fixture
def cosy():
    # until each kind hands the reference its own way, a library voice reaches cosyvoice as its id
    f = FakeEngine("cosyvoice", speakers=list(COSY_SPEAKERS) + IDS).start()
    yield f
    f.stop()


def cosy_got_reference(fake, voice_id, wav):
    """The last synthesis the fake saw was a zero-shot one for this library voice: its prompt_wav decoded to
    the stored reference as CosyVoice uses it (16 kHz)."""
    for method, path, headers, body in reversed(fake.requests):
        if "/inference_zero_shot" in path:
            refs = fake.references
            return bool(refs) and cosyvoice_got(refs[-1], wav)
        if "/inference_sft" in path:
            return False
    return False


# ---- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "flac", "m4a", "webm"])
def test_every_container_is_decoded_and_normalised(hub_factory, fmt):
    h = hub_factory(config())
    data = make_audio(fmt, 3.0)
    r = extract(h, data, fmt, voice_id="v_" + fmt, voice_name="Voice " + fmt, reference_text="hello world",
                language="en")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["success"] is True and body["voice_id"] == "v_" + fmt and body["voice_name"] == "Voice " + fmt
    assert abs(body["duration_seconds"] - 3.0) < 0.1, body
    a = h.get(f"/api/voices/v_{fmt}/audio")
    assert a.status_code == 200 and a.headers["Content-Type"] == "audio/wav"
    wav = a.content
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"  # canonical 44 bytes
    st, _ = probe(wav, "wav")
    assert st["codec_name"] == "pcm_s16le" and int(st["sample_rate"]) == 24000 and st["channels"] == 1
    assert abs(decoded_seconds(wav, "wav") - 3.0) < 0.1
    assert hashlib.sha256(wav).hexdigest() == body["sha256"] == a.headers["X-Voice-Sha256"]


# ---- the whole life of a voice, spoken through a clone-capable fake ---------------------------------

def test_extract_list_get_patch_speak_delete(hub_factory, cosy):
    h = hub_factory(config(cosy))
    r = extract(h, make_audio("mp3", 3.0), "mp3", voice_id="mine", voice_name="Mine", reference_text="ref words",
                engine="cosyvoice")
    assert r.status_code == 201, r.text
    assert r.json()["engine"] == "cosyvoice"
    assert r.headers["Location"] == "/api/voices/mine"

    lst = h.get("/api/voices").json()
    assert lst["count"] == len(lst["voices"]) == 1
    v = lst["voices"][0]
    assert v["voice_id"] == "mine" and v["name"] == "Mine" and v["reference_text"] == "ref words"
    assert v["type"] == "cloned" and abs(v["duration_seconds"] - 3.0) < 0.1 and v["created_at"].endswith("Z")

    g = h.get("/api/voices/mine").json()["voice"]
    assert g["sha256"] == v["sha256"]

    p = requests.patch(h.url + "/api/voices/mine", json={"voice_name": "Renamed", "reference_text": "new words"},
                       timeout=10)
    assert p.status_code == 200, p.text
    assert p.json()["voice"]["name"] == "Renamed" and p.json()["voice"]["reference_text"] == "new words"
    assert h.get("/api/voices/mine").json()["voice"]["reference_text"] == "new words"
    bad = requests.patch(h.url + "/api/voices/mine", json={}, timeout=10)
    assert bad.status_code == 400 and bad.json()["code"] == "nothing_to_change"
    wav = h.get("/api/voices/mine/audio").content

    # /api/synthesize: only the clone-capable provider is a candidate (espeak never is)
    for _ in range(3):
        s = h.post("/api/synthesize", json={"text": "Speak in my voice.", "voice_id": "mine"})
        assert s.status_code == 200, s.text
        assert s.headers["X-Provider"] == "cosy" and s.headers["X-Engine"] == "cosyvoice"
        assert s.headers["Content-Type"] == "audio/wav"
        assert decoded_seconds(s.content, "wav") > 0.3
    assert cosy_got_reference(cosy, "mine", wav)
    assert cosy.references[-1]["text"] == "new words"   # the update reached the engine; the audio is unchanged
    # the other two protocols look the library id up before the configured voices
    o = h.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello there.", "voice": "mine",
                                          "response_format": "mp3"})
    assert o.status_code == 200 and o.headers["X-Provider"] == "cosy", o.text
    st, _ = probe(o.content, "mp3")
    assert st["codec_name"] == "mp3"
    t = h.post("/api/generate", data={"input": "Hello ttsfm.", "voice": "mine", "response_format": "wav"})
    assert t.status_code == 200 and t.headers["X-Provider"] == "cosy", t.text
    lines = [x for x in h.log_lines() if x.get("msg") == "access" and x.get("route") == "/api/synthesize"]
    assert lines and lines[-1].get("voice_id") == "mine"

    d = requests.delete(h.url + "/api/voices/mine", timeout=10)
    assert d.status_code == 200 and d.json()["voice_id"] == "mine"
    assert h.get("/api/voices/mine").status_code == 404
    assert h.get("/api/voices/mine/audio").status_code == 404
    assert h.get("/api/voices").json()["count"] == 0
    assert requests.delete(h.url + "/api/voices/mine", timeout=10).status_code == 404
    data_dir = os.path.join(h.dir, "data", "voices")
    assert not [f for f in os.listdir(data_dir) if f.startswith("mine.")]


def test_cache_key_follows_the_reference(hub_factory, cosy):
    """A voice deleted and made again with other audio never gets the first one's cached audio."""
    h = hub_factory(config(cosy))
    assert extract(h, make_audio("wav", 3.0, freq=200), "wav", voice_id="spk").status_code == 201
    first = h.get("/api/voices/spk/audio").content
    body = {"text": "Cache me if you can.", "voice_id": "spk"}
    r1 = h.post("/api/synthesize", json=body)
    r2 = h.post("/api/synthesize", json=body)
    assert r1.status_code == r2.status_code == 200
    assert r2.headers["X-Cache"] == "HIT"
    assert requests.delete(h.url + "/api/voices/spk", timeout=10).status_code == 200
    assert extract(h, make_audio("wav", 3.0, freq=600), "wav", voice_id="spk").status_code == 201
    r3 = h.post("/api/synthesize", json=body)
    assert r3.status_code == 200 and r3.headers["X-Cache"] == "MISS"
    # the engine got the new voice's compact form, not the deleted one's
    second = h.get("/api/voices/spk/audio").content
    assert second != first
    assert cosyvoice_got(cosy.references[0], first) and cosyvoice_got(cosy.references[-1], second)


def test_no_clone_provider_is_a_clear_400(hub_factory):
    h = hub_factory(config())
    assert extract(h, make_audio("wav", 3.0), "wav", voice_id="mine").status_code == 201
    r = h.post("/api/synthesize", json={"text": "hello", "voice_id": "mine"})
    assert r.status_code == 400 and r.json()["code"] == "no_clone_provider", r.text
    assert "clone" in r.json()["message"]
    o = h.post("/v1/audio/speech", json={"input": "hello", "voice": "mine"})
    assert o.status_code == 400 and o.json()["error"]["code"] == "no_clone_provider"
    # a configured voice still works on /api/synthesize
    ok = h.post("/api/synthesize", json={"text": "hello", "voice_id": "en-us"})
    assert ok.status_code == 200 and ok.headers["X-Provider"] == "local"
    e = h.post("/api/synthesize", json={"text": "hello", "voice_id": "mine", "engine": "nope"})
    assert e.status_code == 400 and e.json()["code"] == "unknown_engine"
    m = h.post("/api/synthesize", json={"text": "hello"})
    assert m.status_code == 400 and m.json()["code"] == "missing_voice_id"


# ---- every bad upload ----------------------------------------------------------------------------

def test_every_bad_upload(hub_factory):
    h = hub_factory(config())
    good = make_audio("wav", 3.0)
    mp3 = make_audio("mp3", 3.0)

    def err(r, status, code):
        assert r.status_code == status, (r.status_code, r.text)
        b = r.json()
        assert b["success"] is False and b["code"] == code and b["message"], b

    err(extract(h, b""), 400, "empty_audio")
    err(extract(h, b"this is plainly not audio at all, just words" * 20, "txt"), 415, "unsupported_audio")
    err(extract(h, os.urandom(4096), "bin"), 415, "unsupported_audio")
    r = extract(h, mp3[:200], "mp3")  # truncated to its first frame header
    assert r.status_code in (400, 415) and r.json()["code"] in ("invalid_audio", "unsupported_audio", "audio_too_short")
    r = extract(h, good[:44], "wav")  # a header and no samples
    assert r.status_code in (400, 415) and r.json()["code"] in ("invalid_audio", "unsupported_audio")
    err(extract(h, make_audio("mp3", 12.0), "mp3"), 400, "audio_too_long")
    err(extract(h, make_audio("wav", 1.0), "wav"), 400, "audio_too_short")
    err(extract(h, make_audio("wav", 3.0, silent=True), "wav"), 400, "audio_silent")
    big = make_audio("wav", 8.0)  # ~1.4 MB of wav, over limits.max_upload (600 KiB)
    assert len(big) > 600 * 1024
    r = extract(h, big)
    assert r.status_code == 413, r.text
    assert extract(h, good, voice_id="dup").status_code == 201
    err(extract(h, good, voice_id="dup"), 409, "voice_exists")
    for bad_id in ("../etc", "a/b", "..", "x" * 65, "sp ace", "dot.dot"):
        err(extract(h, good, voice_id=bad_id), 400, "invalid_voice_id")
    err(extract(h, good, field="sound"), 400, "missing_audio")
    r = h.post("/api/extract_voice", data=b"{}", headers={"Content-Type": "application/json"})
    err(r, 415, "unsupported_media_type")
    err(extract(h, good, engine="../x"), 400, "invalid_engine")
    err(extract(h, good, language="en us"), 400, "invalid_language")
    # nothing but the one good voice was made, and nothing else reached the disk
    assert [v["voice_id"] for v in h.get("/api/voices").json()["voices"]] == ["dup"]
    files = [f for f in os.listdir(os.path.join(h.dir, "data", "voices")) if f != ".members"]  # the members lock
    assert sorted(f.split(".")[0] for f in files) == ["dup", "dup"], files
    # the tenant's cap (max_per_tenant: 3): 403, and it says why
    assert extract(h, good, voice_id="two").status_code == 201
    assert extract(h, good, voice_id="three").status_code == 201
    err(extract(h, good, voice_id="four"), 403, "voice_limit_reached")
    # the path never becomes a file name
    assert h.get("/api/voices/..%2F..%2Fetc").status_code == 404


# ---- tenants -------------------------------------------------------------------------------------

TENANTS = ("auth:\n  mode: api_key\n  keys:\n"
           f'    - {{ id: ka, sha256: "{sha("key-a")}", tenant: a, role: user }}\n'
           f'    - {{ id: kb, sha256: "{sha("key-b")}", tenant: b, role: user }}\n'
           f'    - {{ id: kops, sha256: "{sha("key-ops")}", tenant: ops, role: admin }}\n'
           "tenants:\n  a: { rpm: 0 }\n  b: { rpm: 0 }\n  ops: { rpm: 0 }\n")


def test_tenants_cannot_see_use_or_delete_each_others_voices(hub_factory, cosy):
    h = hub_factory(config(cosy, auth=TENANTS))
    A = {"Authorization": "Bearer key-a"}
    B = {"Authorization": "Bearer key-b"}
    OPS = {"Authorization": "Bearer key-ops"}
    assert extract(h, make_audio("wav", 3.0)).status_code == 401
    r = extract(h, make_audio("wav", 3.0), headers=A, voice_id="shared")
    assert r.status_code == 201 and r.json()["owner"] == "a"
    # B: the voice does not exist, on every route
    assert [v for v in h.get("/api/voices", headers=B).json()["voices"] if v["voice_id"] == "shared"] == []
    for path in ("/api/voices/shared", "/api/voices/shared/audio"):
        r = h.get(path, headers=B)
        assert r.status_code == 404 and r.json()["code"] == "voice_not_found"
    r = requests.patch(h.url + "/api/voices/shared", json={"voice_name": "x"}, headers=B, timeout=10)
    assert r.status_code == 404
    r = requests.delete(h.url + "/api/voices/shared", headers=B, timeout=10)
    assert r.status_code == 404
    # B speaking "shared" does not get A's voice: it is just an unknown name to B
    h.post("/api/synthesize", json={"text": "steal", "voice_id": "shared"}, headers=B)
    h.post("/v1/audio/speech", json={"input": "steal", "voice": "shared"}, headers=B)
    for line in h.log_lines():
        if line.get("msg") == "access" and line.get("tenant") == "b":
            assert "voice_id" not in line or line["route"].startswith("/api/voices"), line
    # A sees and uses it; the admin sees everyone's
    assert [v["voice_id"] for v in h.get("/api/voices", headers=A).json()["voices"]] == ["shared"]
    s = h.post("/api/synthesize", json={"text": "mine", "voice_id": "shared"}, headers=A)
    assert s.status_code == 200 and s.headers["X-Provider"] == "cosy", s.text
    ops = h.get("/api/voices", headers=OPS).json()["voices"]
    assert [(v["voice_id"], v["owner"]) for v in ops] == [("shared", "a")]
    assert h.get("/api/voices/shared/audio", headers=OPS).status_code == 200
    # B may not take the id either, but its own voices are its own
    assert extract(h, make_audio("wav", 3.0), headers=B, voice_id="bee").status_code == 201
    assert [v["voice_id"] for v in h.get("/api/voices", headers=A).json()["voices"]] == ["shared"]
    assert requests.delete(h.url + "/api/voices/shared", headers=A, timeout=10).status_code == 200
    assert requests.delete(h.url + "/api/voices/bee", headers=OPS, timeout=10).status_code == 200
    assert h.get("/api/voices", headers=OPS).json()["count"] == 0


# ---- durability ----------------------------------------------------------------------------------

def test_kill_9_during_uploads_leaves_every_acknowledged_voice_whole():
    cfg = config().replace("max_per_tenant: 3", "max_per_tenant: 1000")
    h = Hub(cfg)
    workdir = h.dir
    data = make_audio("wav", 2.5)
    acked, stop = [], threading.Event()

    def upload_loop():
        i = 0
        while not stop.is_set():
            try:
                r = extract(h, data, voice_id=f"dur{i}")
                if r.status_code == 201:
                    acked.append((f"dur{i}", r.json()["sha256"]))
            except requests.RequestException:
                return
            i += 1

    threads = [threading.Thread(target=upload_loop) for _ in range(1)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked) < 6 and time.time() < deadline:
        time.sleep(0.02)
    h.proc.send_signal(signal.SIGKILL)  # mid-upload: the loop has the next one in flight
    h.proc.wait()
    stop.set()
    for t in threads:
        t.join(30)
    h.log.close()
    assert len(acked) >= 6
    h2 = Hub(cfg, workdir=workdir)
    try:
        listed = {v["voice_id"]: v for v in h2.get("/api/voices").json()["voices"]}
        for vid, digest in acked:
            assert vid in listed, (vid, sorted(listed))
            a = h2.get(f"/api/voices/{vid}/audio")
            assert a.status_code == 200
            assert hashlib.sha256(a.content).hexdigest() == digest == listed[vid]["sha256"]
            assert abs(decoded_seconds(a.content, "wav") - 2.5) < 0.1
        # every listed voice is whole too (one may have been written but not acknowledged)
        for vid, v in listed.items():
            a = h2.get(f"/api/voices/{vid}/audio")
            assert a.status_code == 200 and hashlib.sha256(a.content).hexdigest() == v["sha256"]
        left = os.listdir(os.path.join(workdir, "data", "voices"))
        assert not [f for f in left if f.startswith(".tmp-")]
        assert len([f for f in left if f.endswith(".wav")]) == len(listed)
    finally:
        h2.check_clean_exit()


# ---- two hubs on one redis ------------------------------------------------------------------------

def poll(fn, deadline_s=10.0):
    deadline = time.time() + deadline_s
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.05)


def test_two_hubs_share_the_library_through_redis(hub_factory, redis_server, cosy):
    cfg = config(cosy, backend="redis", redis_port=redis_server.port)
    a = hub_factory(cfg)
    b = hub_factory(cfg)
    r = extract(a, make_audio("ogg", 3.0), "ogg", voice_id="shared", reference_text="made on A")
    assert r.status_code == 201, r.text
    digest = r.json()["sha256"]
    got = poll(lambda: b.get("/api/voices/shared").status_code == 200)
    assert got, "hub B never saw the voice made on hub A"
    assert b.get("/api/voices/shared").json()["voice"]["reference_text"] == "made on A"
    wav = b.get("/api/voices/shared/audio")
    assert wav.status_code == 200 and hashlib.sha256(wav.content).hexdigest() == digest
    s = b.post("/api/synthesize", json={"text": "Spoken through B.", "voice_id": "shared"})
    assert s.status_code == 200 and s.headers["X-Provider"] == "cosy", s.text
    # B read the reference from Redis and made the compact form itself
    assert cosyvoice_got(cosy.references[-1], wav.content) and cosy.references[-1]["text"] == "made on A"
    # one id across hubs: B cannot take it
    assert extract(b, make_audio("wav", 3.0), voice_id="shared").status_code == 409
    # a rename through B reaches A
    assert requests.patch(b.url + "/api/voices/shared", json={"voice_name": "Bee"}, timeout=10).status_code == 200
    assert poll(lambda: a.get("/api/voices/shared").json().get("voice", {}).get("name") == "Bee")
    # a delete through B reaches A
    assert requests.delete(b.url + "/api/voices/shared", timeout=10).status_code == 200
    assert poll(lambda: a.get("/api/voices/shared").status_code == 404), "the delete never reached hub A"
    assert a.get("/api/voices").json()["count"] == 0
    # the library survives a restart of the hubs (it lives in Redis)
    assert extract(a, make_audio("wav", 3.0), voice_id="v_wav").status_code == 201
    c = hub_factory(cfg)
    assert poll(lambda: c.get("/api/voices/v_wav").status_code == 200)
    m = c.get("/metrics").text
    assert 'ttshub_voices_stored{backend="redis"} 1' in m
    vl = c.get("/health").json()["components"]["voice_library"]
    assert vl["backend"] == "redis" and vl["voices"] == 1


def test_uploads_pass_the_rate_limits(hub_factory):
    h = hub_factory(config().replace("ip_rpm: 0", "ip_rpm: 2"))
    good = make_audio("wav", 3.0)
    codes = [extract(h, good, voice_id=f"r{i}").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    r = extract(h, good, voice_id="r9")
    assert r.status_code == 429 and r.headers.get("Retry-After") and r.json()["success"] is False
    assert h.get("/api/voices").json()["count"] == 2


def test_a_voice_deleted_while_it_speaks_stays_whole_for_that_request(hub_factory):
    slow = FakeEngine("cosyvoice", chunk_delay=0.05, chunk_bytes=4096, speakers=list(COSY_SPEAKERS) + IDS).start()
    try:
        cfg = config().replace("  - { name: local, type: espeak }\n",
                               "  - { name: local, type: espeak }\n"
                               f'  - {{ name: cosy, type: cosyvoice, base_url: "{slow.url}", max_input_chars: 40 }}\n')
        h = hub_factory(cfg)
        assert extract(h, make_audio("wav", 3.0), voice_id="mine").status_code == 201
        text = " ".join(f"This is sentence number {i} of the long text." for i in range(12))  # 12 parts
        r = requests.post(h.url + "/api/synthesize", json={"text": text, "voice_id": "mine", "output_format": "pcm"},
                          stream=True, timeout=120)
        assert r.status_code == 200
        it = r.iter_content(4096)
        first = next(it)
        d = requests.delete(h.url + "/api/voices/mine", timeout=10)  # later parts have not started yet
        assert d.status_code == 200
        rest = b"".join(it)
        pcm = first + rest
        assert len(pcm) / 2 / 24000 > 5.0  # all twelve parts were spoken
        assert slow.stats()["by_path"]  # and the engine was reached for each of them
        assert slow.ok >= 12
        assert h.get("/api/voices/mine").status_code == 404
    finally:
        slow.stop()
