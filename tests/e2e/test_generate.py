"""POST /api/generate: real espeak-ng speech in every format, checked by decoding."""
import json
import uuid

import pytest
import requests

from audio import CODEC, MIME, decoded_seconds, probe

SHORT = "Hello world."
LONG = ("Hello world. This is a longer sentence that takes clearly more time to speak. "
        "And here is a third sentence, so the audio must be much longer than the first one.")

# The headers ttsfm's Python client sends (it mimics a browser on openai.fm).
TTSFM_HEADERS = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36",
    "Accept": "application/json, text/plain, */*",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Origin": "https://www.openai.fm",
    "Referer": "https://www.openai.fm/",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-origin",
    "sec-ch-ua": '"Not_A Brand";v="8", "Chromium";v="120"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Windows"',
    "DNT": "1",
}


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_decodes_and_grows_with_text(hub, fmt):
    durations = []
    for text in (SHORT, LONG):
        r = hub.post(data={"input": text, "voice": "alloy", "response_format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == MIME[fmt]
        assert r.headers["X-Audio-Format"] == fmt
        assert r.headers["X-Provider"] == "local"
        assert r.headers["X-Cache"] in ("MISS", "HIT", "COALESCED")
        assert len(r.content) > 100
        if fmt != "pcm":
            stream, _ = probe(r.content, fmt)
            assert stream["codec_name"] == CODEC[fmt], stream
            assert int(stream["channels"]) == 1
        durations.append(decoded_seconds(r.content, fmt))
    short, long_ = durations
    assert 0.3 < short < 5.0, durations
    assert long_ > short * 2.5, durations


def test_wav_has_canonical_header(hub):
    r = hub.post(data={"input": SHORT, "voice": "nova", "response_format": "wav"})
    assert r.status_code == 200
    b = r.content
    assert b[0:4] == b"RIFF" and b[8:12] == b"WAVE" and b[12:16] == b"fmt "
    assert int.from_bytes(b[16:20], "little") == 16          # PCM fmt chunk, no extension
    assert int.from_bytes(b[20:22], "little") == 1           # PCM
    assert b[36:40] == b"data"                               # data right after fmt: 44-byte header
    assert int.from_bytes(b[24:28], "little") == 24000


def test_mp3_has_no_id3_or_xing(hub):
    r = hub.post(data={"input": SHORT, "voice": "alloy", "response_format": "mp3"})
    assert r.status_code == 200
    assert not r.content.startswith(b"ID3")
    assert b"Xing" not in r.content[:4096] and b"Info" not in r.content[:4096]
    assert r.content[0] == 0xFF and (r.content[1] & 0xE0) == 0xE0


def test_ttsfm_client_request(hub):
    """Form-urlencoded with the browser-like headers ttsfm sends; no model, no speed."""
    gen = str(uuid.uuid4())
    r = requests.post(hub.url + "/api/generate", headers=TTSFM_HEADERS, timeout=60,
                      data={"input": "The quick brown fox jumps over the lazy dog.", "voice": "coral",
                            "generation": gen, "response_format": "mp3",
                            "prompt": "Speak in a cheerful and positive tone."})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/mpeg"
    assert r.headers["X-Request-Id"] == gen
    assert decoded_seconds(r.content, "mp3") > 1.0


def test_default_format_is_mp3(hub):
    r = hub.post(data={"input": SHORT, "voice": "alloy"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "audio/mpeg"


def test_json_body(hub):
    r = hub.post(json={"input": SHORT, "voice": "echo", "response_format": "flac", "speed": 1.0})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/flac"
    assert probe(r.content, "flac")[0]["codec_name"] == "flac"


def test_multipart_body(hub):
    files = {"input": (None, SHORT), "voice": (None, "fable"), "response_format": (None, "opus")}
    r = hub.post(files=files)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/opus"
    assert probe(r.content, "opus")[0]["codec_name"] == "opus"


def test_voices_differ(hub):
    a = hub.post(data={"input": SHORT, "voice": "alloy", "response_format": "pcm"}).content
    b = hub.post(data={"input": SHORT, "voice": "onyx", "response_format": "pcm"}).content
    assert a != b


def test_espeak_voice_names_directly(hub):
    for voice, text in (("en-us", "Hello there."), ("de", "Guten Tag."), ("zh", "你好，世界。")):
        r = hub.post(data={"input": text, "voice": voice, "response_format": "wav"})
        assert r.status_code == 200, (voice, r.text)
        assert decoded_seconds(r.content, "wav") > 0.3


def test_speed_changes_duration(hub):
    d = {}
    for speed in ("0.5", "1.0", "2.0", "4.0"):
        r = hub.post(data={"input": LONG, "voice": "alloy", "response_format": "wav", "speed": speed})
        assert r.status_code == 200, r.text
        d[speed] = decoded_seconds(r.content, "wav")
    assert d["0.5"] > d["1.0"] * 1.6
    assert d["2.0"] < d["1.0"] * 0.65
    assert d["4.0"] < d["2.0"] * 0.75


def test_pcm_sample_rate_field(hub):
    r = hub.post(data={"input": SHORT, "voice": "alloy", "response_format": "pcm", "sample_rate": "16000"})
    assert r.status_code == 200
    r2 = hub.post(data={"input": SHORT, "voice": "alloy", "response_format": "pcm"})
    # the same speech at 16 kHz takes 2/3 of the bytes of 24 kHz
    assert abs(len(r.content) / len(r2.content) - 16000 / 24000) < 0.05


def test_request_id_generated_when_absent(hub):
    r = hub.post(data={"input": SHORT, "voice": "alloy"})
    rid = r.headers["X-Request-Id"]
    uuid.UUID(rid)


def test_health(hub):
    r = hub.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "healthy"
    assert "version" in h and h["uptime_seconds"] >= 0
    assert h["components"]["providers"]["local"]["status"] == "healthy"
    assert {"providers", "registry", "redis", "limiter"} <= set(h["components"])
    assert hub.get("/api/health").json()["status"] == "healthy"


def test_access_log_line(hub):
    gen = str(uuid.uuid4())
    hub.post(data={"input": "Log me.", "voice": "alloy", "generation": gen, "response_format": "wav"})
    lines = [l for l in hub.log_lines() if l.get("generation") == gen]
    assert lines, hub.output()[-2000:]
    l = lines[-1]
    assert l["msg"] == "access" and l["status"] == 200 and l["route"] == "/api/generate"
    assert l["voice"] == "alloy" and l["provider"] == "local" and l["format"] == "wav"
    assert l["chars"] == 7 and l["bytes"] > 44 and l["duration_ms"] > 0
    assert "ts" in l and l["level"] == "info"


def test_unicode_limits_counted_in_code_points(hub_factory):
    h = hub_factory("limits:\n  max_input_chars: 10\n")
    ok = h.post(data={"input": "你好你好你好你好你好", "voice": "zh", "response_format": "wav"})   # 10 code points, 30 bytes
    assert ok.status_code == 200, ok.text
    over = h.post(data={"input": "你好你好你好你好你好你", "voice": "zh", "response_format": "wav"})
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "input_too_long"
    emoji = h.post(data={"input": "😀" * 10, "voice": "en-us", "response_format": "wav"})
    assert emoji.status_code in (200,), emoji.text
