"""Every engine kind behind the hub, through both client protocols, against the faithful fakes."""
import base64
import json
import time

import pytest
import requests

from audio import CODEC, MIME, decoded_seconds, probe
from conftest import wait_until
from fakes.engines import FakeEngine

# kind -> (fake kind, fake options, provider config lines, engine voice for the public voice "alloy")
KINDS = {
    "openai_fm": ("openai_fm", {}, "", "alloy"),
    "openai": ("openai", {"api_key": "sk-test"}, "    api_key_env: TEST_UPSTREAM_KEY\n", "alloy"),
    "gpt_sovits": ("gpt_sovits", {}, "", "/refs/alloy.wav"),
    "gpt_sovits_v1": ("gpt_sovits_v1", {}, "    api: v1\n", "/refs/alloy.wav"),
    "xtts": ("xtts", {}, "", "female"),
    "openvoice": ("openvoice", {}, "", "demo_speaker0"),
    "cosyvoice": ("cosyvoice", {}, "", "英文女"),
    "fish": ("fish", {}, "", "alloy"),
    "elevenlabs": ("elevenlabs", {"api_key": "xi-test"}, "    api_key_env: TEST_UPSTREAM_KEY\n",
                   "21m00Tcm4TlvDq8ikWAM"),
    "azure": ("azure", {"api_key": "az-test"}, "    api_key_env: TEST_UPSTREAM_KEY\n    region: westus\n",
              "en-US-JennyNeural"),
    "nodes": ("node", {}, "", "alloy"),
}


def provider_yaml(name, kind, url, extra, voice, more=""):
    ptype = "gpt_sovits" if kind == "gpt_sovits_v1" else kind
    return (f"  - name: {name}\n    type: {ptype}\n    base_url: \"{url}\"\n    timeout: 3s\n{extra}{more}"
            f"    voices: {{ alloy: \"{voice}\" }}\n")


def config(providers, router=""):
    return "providers:\n" + providers + (router or "")


@pytest.fixture
def fake_factory():
    fakes = []

    def make(kind, **kw):
        f = FakeEngine(kind, **kw).start()
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        f.stop()


def key_of(fake_opts):
    return fake_opts.get("api_key", "unused")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_both_protocols(kind, hub_factory, fake_factory):
    fkind, fopts, extra, voice = KINDS[kind]
    f = fake_factory(fkind, **fopts)
    h = hub_factory(config(provider_yaml("up", kind, f.url, extra, voice)),
                    env={"TEST_UPSTREAM_KEY": key_of(fopts)})
    text = "Hello from the hub to every engine."
    r = h.post(data={"input": text, "voice": "alloy", "response_format": "mp3"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/mpeg" and r.headers["X-Provider"] == "up"
    assert probe(r.content, "mp3")[0]["codec_name"] == "mp3"
    # the fake makes 60 ms per character
    assert abs(decoded_seconds(r.content, "mp3") - len(text) * 0.06) < 0.35
    r = h.post("/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy",
                                          "response_format": "wav"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/wav"
    assert r.content[:4] == b"RIFF" and r.content[36:40] == b"data"
    assert abs(decoded_seconds(r.content, "wav") - len(text) * 0.06) < 0.2
    assert f.calls == 2


FAULT_STATUS = {
    "status_500": (502, "upstream_error"),
    "status_429": (503, "service_unavailable"),
    "status_4xx": (400, "invalid_request_error"),
    "slow_first_byte": (504, "timeout_error"),
    "refuse": (502, "upstream_error"),
    "reset_before": (502, "upstream_error"),
    "garbage": (502, "upstream_error"),
}


# A 4xx that is not the client's fault: GPT-SoVITS's {"message":"tts failed","Exception":...} is an engine
# failure whatever its status, and ElevenLabs' 401 quota_exceeded is our account's problem.
NOT_CLIENT_4XX = {"gpt_sovits", "elevenlabs"}


@pytest.mark.parametrize("fault", sorted(FAULT_STATUS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fault_matrix(kind, fault, hub_factory, fake_factory):
    """With a healthy second provider the client sees no failure; without one, the exact status."""
    fkind, fopts, extra, voice = KINDS[kind]
    bad = fake_factory(fkind, **fopts)
    good = fake_factory("openai_fm")
    params = {"seconds": 4.5} if fault == "slow_first_byte" else {}
    bad.set_fault(fault, **params)
    two = (provider_yaml("bad", kind, bad.url, extra, voice, "    priority: 0\n") +
           provider_yaml("good", "openai_fm", good.url, "", "alloy", "    priority: 1\n"))
    h = hub_factory(config(two, "router:\n  strategy: priority\n"), env={"TEST_UPSTREAM_KEY": key_of(fopts)})
    r = h.post(data={"input": "Fallback works.", "voice": "alloy", "response_format": "wav"})
    client_fault = fault == "status_4xx" and kind not in NOT_CLIENT_4XX
    if client_fault:
        # the client's fault: passed on as a 400, never retried or failed over
        assert r.status_code == 400, r.text
        assert good.calls == 0
    else:
        assert r.status_code == 200, r.text
        assert r.headers["X-Provider"] == "good"
        assert decoded_seconds(r.content, "wav") > 0.5
    h.check_clean_exit()

    one = provider_yaml("bad", kind, bad.url, extra, voice)
    h2 = hub_factory(config(one), env={"TEST_UPSTREAM_KEY": key_of(fopts)})
    r = h2.post(data={"input": "No fallback here.", "voice": "alloy", "response_format": "wav"})
    status, etype = FAULT_STATUS[fault]
    if fault == "status_4xx" and not client_fault:
        status, etype = 502, "upstream_error"
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == etype
    if status in (503,):
        assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("fault", ["wrong_content_type"])
@pytest.mark.parametrize("kind", ["openai", "xtts", "cosyvoice", "fish", "azure"])
def test_lying_content_type_is_sniffed(kind, fault, hub_factory, fake_factory):
    fkind, fopts, extra, voice = KINDS[kind]
    f = fake_factory(fkind, **fopts)
    f.set_fault(fault)
    h = hub_factory(config(provider_yaml("up", kind, f.url, extra, voice)),
                    env={"TEST_UPSTREAM_KEY": key_of(fopts)})
    r = h.post(data={"input": "Content types lie.", "voice": "alloy", "response_format": "flac"})
    assert r.status_code == 200, r.text
    assert abs(decoded_seconds(r.content, "flac") - len("Content types lie.") * 0.06) < 0.3


@pytest.mark.parametrize("fault", ["reset_after", "truncated"])
def test_failure_after_first_byte_cuts_response(fault, hub_factory, fake_factory):
    f = fake_factory("openai", api_key="sk-test", chunk_bytes=4096, chunk_delay=0.05)
    f.set_fault(fault, bytes=20000)
    h = hub_factory(config(provider_yaml("up", "openai", f.url, KINDS["openai"][2], "alloy")),
                    env={"TEST_UPSTREAM_KEY": "sk-test"})
    text = "A long answer that will be cut. " * 20
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        r = requests.post(h.url + "/api/generate", timeout=30,
                          data={"input": text, "voice": "alloy", "response_format": "pcm"})
        # a cut chunked response never ends cleanly
        raise AssertionError(f"response ended cleanly: {r.status_code} {len(r.content)}")
    m = h.get("/metrics").text
    assert 'ttshub_cut_responses_total{provider="up"} 1' in m


def test_breaker_opens_half_opens_and_closes(hub_factory, fake_factory):
    f = fake_factory("openai", api_key="sk-test")
    cfg = config(provider_yaml("up", "openai", f.url, KINDS["openai"][2], "alloy"),
                 "router:\n  retries: 0\n  health_interval: 1h\n"
                 "  breaker: { failures: 3, failure_ratio: 0, window: 30s, open_for: 1s, half_open_probes: 1 }\n")
    h = hub_factory(cfg, env={"TEST_UPSTREAM_KEY": "sk-test"})
    f.set_fault("status_500")
    for _ in range(3):
        assert h.post(data={"input": "x", "voice": "alloy"}).status_code == 502
    calls = f.calls
    r = h.post(data={"input": "x", "voice": "alloy"})
    assert r.status_code == 503 and f.calls == calls, "an open breaker must not reach the engine"
    assert h.get("/health").json()["components"]["providers"]["up"]["breaker"] == "open"
    f.clear_fault()
    time.sleep(1.2)  # open_for passes: the next call is the half-open probe
    r = h.post(data={"input": "Back again.", "voice": "alloy"})
    assert r.status_code == 200, r.text
    assert h.get("/health").json()["components"]["providers"]["up"]["breaker"] == "closed"
    assert 'ttshub_provider_breaker_state{provider="up"} 0' in h.get("/metrics").text


def test_retry_once_then_succeed(hub_factory, fake_factory):
    f = fake_factory("openai", api_key="sk-test")
    f.set_fault("status_500", count=1)
    h = hub_factory(config(provider_yaml("up", "openai", f.url, KINDS["openai"][2], "alloy")),
                    env={"TEST_UPSTREAM_KEY": "sk-test"})
    r = h.post(data={"input": "Second time lucky.", "voice": "alloy"})
    assert r.status_code == 200 and f.calls == 2
    assert 'ttshub_retries_total{provider="up"} 1' in h.get("/metrics").text


def test_hedging_uses_the_faster_provider(hub_factory, fake_factory):
    slow = fake_factory("openai_fm", latency=3.0)
    fast = fake_factory("openai_fm")
    two = (provider_yaml("slow", "openai_fm", slow.url, "", "alloy", "    priority: 0\n    timeout: 10s\n")
           .replace("    timeout: 3s\n", "") +
           provider_yaml("fast", "openai_fm", fast.url, "", "alloy", "    priority: 1\n"))
    h = hub_factory(config(two, "router:\n  strategy: priority\n  hedge_after: 200ms\n"))
    r = h.post(data={"input": "Hedge me.", "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200 and r.headers["X-Provider"] == "fast"
    assert 'ttshub_hedges_total{provider="fast"} 1' in h.get("/metrics").text


def test_streaming_first_chunk_before_engine_finishes(hub_factory, fake_factory):
    f = fake_factory("openai", api_key="sk-test", chunk_bytes=8192, chunk_delay=0.3)
    h = hub_factory(config(provider_yaml("up", "openai", f.url, KINDS["openai"][2], "alloy")),
                    env={"TEST_UPSTREAM_KEY": "sk-test"})
    text = "Streaming through the hub. " * 3   # ~5 s of audio -> ~30 chunks of pcm at 0.3 s each
    t0 = time.time()
    r = requests.post(h.url + "/api/generate", stream=True, timeout=60,
                      data={"input": text, "voice": "alloy", "response_format": "mp3"})
    assert r.status_code == 200
    it = r.iter_content(1024)
    first = next(it)
    t_first = time.time() - t0
    rest = b"".join(it)
    t_all = time.time() - t0
    assert first and rest
    assert t_first < t_all / 3, (t_first, t_all)   # the engine was still sending when audio reached us


def test_openai_sse(hub_factory, fake_factory):
    f = fake_factory("openai", api_key="sk-test")
    h = hub_factory(config(provider_yaml("up", "openai", f.url, KINDS["openai"][2], "alloy")),
                    env={"TEST_UPSTREAM_KEY": "sk-test"})
    text = "Server sent events."
    r = requests.post(h.url + "/v1/audio/speech", timeout=30, json={
        "model": "gpt-4o-mini-tts", "input": text, "voice": {"id": "alloy"}, "response_format": "mp3",
        "stream_format": "sse"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    audio = b""
    done = None
    for line in r.text.splitlines():
        if not line.startswith("data: "):
            continue
        ev = json.loads(line[6:])
        if ev["type"] == "speech.audio.delta":
            audio += base64.b64decode(ev["audio"])
        elif ev["type"] == "speech.audio.done":
            done = ev
    assert done and done["usage"]["input_characters"] == len(text)
    assert probe(audio, "mp3")[0]["codec_name"] == "mp3"


def test_openai_route_errors_and_listing(hub):
    r = hub.post("/v1/audio/speech", data="input=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = hub.post("/v1/audio/speech", json={"input": "x", "voice": "alloy", "stream_format": "video"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_stream_format"
    r = hub.post("/v1/audio/speech", json={"input": "x", "voice": "alloy", "speed": 9})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_speed"
    r = hub.post("/v1/audio/speech", json={"voice": "alloy"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_input"
    r = hub.post("/v1/audio/speech", json={"input": "OpenAI shape.", "voice": "nova", "response_format": "opus"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/opus"
    models = hub.get("/v1/models").json()
    assert models["object"] == "list" and "tts-1" in [m["id"] for m in models["data"]]
    voices = hub.get("/v1/audio/voices").json()["voices"]
    alloy = [v for v in voices if v["id"] == "alloy"]
    assert alloy and alloy[0]["providers"] == ["local"]


def test_metrics_exposition(hub):
    hub.post(data={"input": "Count me.", "voice": "alloy"})
    m = hub.get("/metrics")
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    t = m.text
    assert "# TYPE ttshub_requests_total counter" in t
    assert 'ttshub_requests_total{route="/api/generate",status="200"}' in t
    assert "ttshub_request_duration_seconds_bucket" in t and 'le="+Inf"' in t
    assert 'ttshub_upstream_first_byte_seconds_count{provider="local"}' in t
    assert 'ttshub_provider_breaker_state{provider="local"} 0' in t
    assert "ttshub_transcode_seconds_count" in t


def long_english(n):
    s = ("The hub splits long text at sentence boundaries. Each part is made in parallel! "
         "Is the joined audio seamless? It should be; every part is decoded and encoded once. ")
    return (s * (n // len(s) + 1))[:n].rsplit(" ", 1)[0] + "."


def chinese(n):
    s = "这是一个很长的中文句子，用来测试分段。第二句话也在这里！第三句是问题吗？是的；分号也算句子结束。"
    return (s * (n // len(s) + 1))[:n]


@pytest.mark.parametrize("text,fmt", [(long_english(20000), "wav"), (chinese(5000), "mp3")],
                         ids=["english-20000", "chinese-5000"])
def test_long_text_split_and_stitched(text, fmt, hub_factory, fake_factory):
    fakes = [fake_factory("openai", api_key="sk-test", ms_per_char=20) for _ in range(2)]
    provs = "".join(provider_yaml(f"up{i}", "openai", f.url, KINDS["openai"][2], "alloy")
                    .replace("    timeout: 3s\n", "    timeout: 30s\n") for i, f in enumerate(fakes))
    h = hub_factory(config(provs, "router:\n  strategy: round_robin\n"), env={"TEST_UPSTREAM_KEY": "sk-test"})
    r = h.post(data={"input": text, "voice": "alloy", "response_format": fmt}, timeout=300)
    assert r.status_code == 200, r.text[:300]
    # every part the engines saw, and each one within the engine's 4096-character limit
    parts = []
    for f in fakes:
        for method, path, headers, body in f.requests:
            if path.startswith("/v1/audio/speech"):
                parts.append(json.loads(body)["input"])
    assert len(parts) >= (2 if len(text) < 6000 else 5)
    assert all(len(p) <= 4096 for p in parts)
    assert sum(len(p) for p in parts) >= len(text.replace(" ", "")) * 0.9
    # no gaps: the stitched length is the sum of the parts' lengths (20 ms per character)
    expected = sum(len(p) for p in parts) * 0.020
    got = decoded_seconds(r.content, fmt)
    assert abs(got - expected) / expected < 0.02, (got, expected)


def test_provider_queue_full_gives_503(hub_factory, fake_factory):
    f = fake_factory("openai_fm", latency=1.0)
    cfg = config(provider_yaml("up", "openai_fm", f.url, "", "alloy", "    concurrency: 1\n    queue: 1\n"),
                 "router:\n  retries: 0\n") + "cache: { enabled: false }\n"
    h = hub_factory(cfg)
    out = [None] * 3

    def one(i):
        out[i] = requests.post(h.url + "/api/generate", timeout=30,
                               data={"input": f"Queue {i}.", "voice": "alloy", "response_format": "wav"})

    import threading
    ts = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    prov = lambda: h.get("/api/status").json()["providers"]["up"]  # noqa: E731
    ts[0].start()  # runs
    assert wait_until(lambda: prov()["in_flight"] == 1), prov()
    ts[1].start()  # waits in the queue
    assert wait_until(lambda: prov()["queued"] == 1), prov()
    ts[2].start()  # turned away
    for t in ts:
        t.join(30)
    codes = sorted(r.status_code for r in out)
    assert codes == [200, 200, 503], codes        # one runs, one waits in the queue, one is turned away
    r503 = [r for r in out if r.status_code == 503][0]
    assert r503.json()["error"]["type"] == "service_unavailable" and int(r503.headers["Retry-After"]) >= 1
    assert f.calls == 2


def test_health_probe_routes_around_a_dead_provider(hub_factory, fake_factory):
    dead = fake_factory("openai_fm")
    live = fake_factory("openai_fm")
    two = (provider_yaml("dead", "openai_fm", dead.url, "", "alloy", "    priority: 0\n") +
           provider_yaml("live", "openai_fm", live.url, "", "alloy", "    priority: 1\n"))
    h = hub_factory(config(two, "router:\n  strategy: priority\n  health_interval: 200ms\n") +
                    "cache: { enabled: false }\n")
    dead.set_fault("refuse")
    deadline = time.time() + 10
    while time.time() < deadline:
        p = h.get("/health").json()["components"]["providers"]["dead"]
        if p["status"] == "unhealthy":
            break
        time.sleep(0.1)
    assert p["status"] == "unhealthy" and "probe" in p
    assert h.get("/health").json()["status"] == "degraded"
    r = h.post(data={"input": "Around it.", "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200 and r.headers["X-Provider"] == "live"
    dead.clear_fault()
    deadline = time.time() + 10
    while time.time() < deadline and h.get("/health").json()["status"] != "healthy":
        time.sleep(0.1)
    assert h.get("/health").json()["status"] == "healthy"


def test_round_robin_and_least_load_spread(hub_factory, fake_factory):
    a, b = fake_factory("openai_fm"), fake_factory("openai_fm")
    provs = provider_yaml("a", "openai_fm", a.url, "", "alloy") + provider_yaml("b", "openai_fm", b.url, "", "alloy")
    h = hub_factory(config(provs, "router:\n  strategy: round_robin\n") + "cache: { enabled: false }\n")
    seen = [h.post(data={"input": f"RR {i}.", "voice": "alloy"}).headers["X-Provider"] for i in range(6)]
    assert seen.count("a") == 3 and seen.count("b") == 3 and seen[0] != seen[1]
    h2 = hub_factory(config(provs.replace("weight: 1", ""), "router:\n  strategy: weighted\n") +
                     "cache: { enabled: false }\n")
    seen = [h2.post(data={"input": f"W {i}.", "voice": "alloy"}).headers["X-Provider"] for i in range(4)]
    assert seen.count("a") == 2 and seen.count("b") == 2


def test_routes_and_voice_catalogue(hub_factory, fake_factory):
    """router.routes match on model and voice; the voice catalogue maps a public voice per provider."""
    fm = fake_factory("openai_fm")
    oa = fake_factory("openai", api_key="sk-test")
    provs = (f"  - name: fm\n    type: openai_fm\n    base_url: \"{fm.url}\"\n"
             f"  - name: oa\n    type: openai\n    base_url: \"{oa.url}\"\n    api_key_env: TEST_UPSTREAM_KEY\n")
    router = ("router:\n  strategy: priority\n  routes:\n"
              "    - match: { model: \"hd-*\" }\n      providers: [oa]\n"
              "    - match: { voice: \"narrator\" }\n      providers: [fm]\n")
    voices = "voices:\n  narrator: { language: en, providers: { fm: echo, oa: onyx } }\n"
    h = hub_factory("providers:\n" + provs + router + voices + "cache: { enabled: false }\n",
                    env={"TEST_UPSTREAM_KEY": "sk-test"})
    r = h.post("/v1/audio/speech", json={"model": "hd-voices", "input": "Model route.", "voice": "alloy"})
    assert r.status_code == 200 and r.headers["X-Provider"] == "oa"
    r = h.post(data={"input": "Voice route.", "voice": "narrator", "response_format": "wav"})
    assert r.status_code == 200 and r.headers["X-Provider"] == "fm"
    body = fm.requests[-1][3].decode()
    assert "voice=echo" in body                      # the catalogue's engine voice for fm
    r = h.post("/v1/audio/speech", json={"model": "hd-x", "input": "Catalogue.", "voice": "narrator"})
    assert r.status_code == 200 and r.headers["X-Provider"] == "oa"
    assert json.loads(oa.requests[-1][3])["voice"] == "onyx"
    v = h.get("/v1/audio/voices").json()["voices"]
    narrator = [x for x in v if x["id"] == "narrator"][0]
    assert narrator["language"] == "en" and set(narrator["providers"]) == {"fm", "oa"}
    m = [x["id"] for x in h.get("/v1/models").json()["data"]]
    assert "tts-1" in m


def test_metrics_on_their_own_listener(hub_factory):
    from conftest import free_port
    mport = free_port()
    h = hub_factory(f"metrics_listen: \"127.0.0.1:{mport}\"\n")
    assert h.post(data={"input": "Counted.", "voice": "alloy"}).status_code == 200
    assert h.get("/metrics").status_code == 404          # not on the main listener any more
    m = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=10)
    assert m.status_code == 200 and 'ttshub_requests_total{route="/api/generate",status="200"} 1' in m.text
    assert requests.get(f"http://127.0.0.1:{mport}/health", timeout=10).json()["status"] == "healthy"
    assert requests.post(f"http://127.0.0.1:{mport}/api/generate", timeout=10,
                         data={"input": "x", "voice": "alloy"}).status_code == 404
