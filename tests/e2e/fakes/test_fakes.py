"""Tests of the engine fakes themselves: wire protocol, audio, error shapes, faults, control, CLI.

Run: /usr/bin/python3 -m pytest tests/e2e/fakes -q
"""
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import pytest
import requests

from fakes import audio_gen as ag
from fakes.engines import FAULTS, KINDS, FakeEngine

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "Hello world, this is a fake engine."   # 35 code points → 2.1 s at 60 ms/char
SSML = ('<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">'
        '<voice name="en-US-JennyNeural">{}</voice></speak>')
EL_VOICE = "21m00Tcm4TlvDq8ikWAM"


@pytest.fixture
def fake():
    made = []

    def make(kind, **kw):
        f = FakeEngine(kind, **kw).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def probe(data, fmt=None):
    """ffprobe's first audio stream of the bytes (fmt forces a demuxer, e.g. "ogg")."""
    with tempfile.NamedTemporaryFile() as t:
        t.write(data)
        t.flush()
        args = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams"]
        if fmt:
            args += ["-f", fmt]
        out = subprocess.run(args + [t.name], capture_output=True, check=True).stdout
    return json.loads(out)["streams"][0]


def assert_audio(data, codec, rate, fmt=None):
    s = probe(data, fmt)
    assert s["codec_name"] == codec, s
    assert int(s["sample_rate"]) == rate, s
    assert int(s["channels"]) == 1, s


def pcm_len(text, rate, speed=1.0, ms=60):
    return ag.n_samples(text, rate, ms, speed) * 2


# ---------------------------------------------------------------------------------------------
# one synthesis request per kind (used by the fault matrix)
# ---------------------------------------------------------------------------------------------

def synth(kind, url, text=TEXT, **kw):
    kw.setdefault("timeout", 10)
    if kind == "openai":
        return requests.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy",
                                                              "response_format": "pcm"}, **kw)
    if kind == "openai_fm":
        return requests.post(url + "/api/generate", data={"input": text, "voice": "alloy", "response_format": "wav"},
                             **kw)
    if kind == "gpt_sovits":
        return requests.post(url + "/tts", json={"text": text, "text_lang": "en", "ref_audio_path": "ref.wav",
                                                 "prompt_lang": "en", "media_type": "raw"}, **kw)
    if kind == "gpt_sovits_v1":
        return requests.post(url + "/", json={"text": text, "text_language": "en"}, **kw)
    if kind == "xtts":
        return requests.post(url + "/tts_to_audio/", json={"text": text, "speaker_wav": "female", "language": "en"},
                             **kw)
    if kind == "openvoice":
        return requests.get(url + "/synthesize_speech/", params={"text": text, "voice": "demo_speaker0"}, **kw)
    if kind == "cosyvoice":
        return requests.post(url + "/inference_sft", data={"tts_text": text, "spk_id": "英文女"}, **kw)
    if kind == "fish":
        return requests.post(url + "/v1/tts", json={"text": text, "format": "pcm"}, **kw)
    if kind == "elevenlabs":
        return requests.post(url + f"/v1/text-to-speech/{EL_VOICE}", params={"output_format": "pcm_16000"},
                             json={"text": text}, **kw)
    if kind == "azure":
        return requests.post(url + "/cognitiveservices/v1", data=SSML.format(text).encode(),
                             headers={"Content-Type": "application/ssml+xml",
                                      "X-Microsoft-OutputFormat": "raw-16khz-16bit-mono-pcm"}, **kw)
    if kind == "node":
        return requests.post(url + "/synthesize", json={"text": text, "voice": "default", "format": "pcm"}, **kw)
    raise AssertionError(kind)


def error_shape_ok(kind, r, status):
    """The engine's own error body for a given status."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    ct = r.headers.get("Content-Type", "")
    if kind == "azure":
        assert r.content == b""
        return
    if kind in ("gpt_sovits", "gpt_sovits_v1", "cosyvoice") and status == 500:
        assert ct.startswith("text/plain") and r.text == "Internal Server Error"
        return
    body = r.json()
    if kind in ("openai", "openai_fm"):
        assert isinstance(body["error"], dict) and body["error"]["message"] and "type" in body["error"]
    elif kind == "gpt_sovits":
        assert "message" in body
    elif kind == "gpt_sovits_v1":
        assert "message" in body and "code" in body
    elif kind in ("xtts", "openvoice"):
        assert "detail" in body
        if status == 500:
            assert isinstance(body["detail"], str)
    elif kind == "cosyvoice":
        assert isinstance(body["detail"], (list, str))
    elif kind == "fish":
        assert body["statusCode"] == status and body["message"] and body["error"]
    elif kind == "elevenlabs":
        assert body["detail"]["status"] and body["detail"]["message"]
    elif kind == "node":
        assert body["success"] is False and body["message"] and body["code"]


# ---------------------------------------------------------------------------------------------
# audio generator
# ---------------------------------------------------------------------------------------------

def test_audio_duration_proportional_and_voice_dependent():
    a = ag.pcm("abcdefghij", "alloy", 24000)
    b = ag.pcm("abcdefghij" * 2, "alloy", 24000)
    c = ag.pcm("abcdefghij", "echo", 24000)
    assert len(a) == 10 * 0.06 * 24000 * 2 and len(b) == 2 * len(a)
    assert a != c and len(a) == len(c)
    assert ag.pcm("abc", "alloy", 24000, ms_per_char=100) != a[:len(a)]
    assert len(ag.pcm("abcdefghij", "alloy", 24000, speed=2.0)) == len(a) // 2
    assert ag.synth("abc", "x", "mp3", 24000) is ag.synth("abc", "x", "mp3", 24000)  # cached
    assert ag.pcm("héllo wörld", "v", 16000) == ag.pcm("héllo wörld", "v", 16000)


# ---------------------------------------------------------------------------------------------
# success and error shapes, per kind
# ---------------------------------------------------------------------------------------------

def test_openai(fake):
    f = fake("openai", api_key="sk-test")
    h = {"Authorization": "Bearer sk-test"}
    url = f.url + "/v1/audio/speech"
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "alloy"}, headers=h)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert r.headers["Transfer-Encoding"] == "chunked" and r.headers["x-request-id"]
    assert_audio(r.content, "mp3", 24000)
    for fmt, codec, rate in (("opus", "opus", 48000), ("aac", "aac", 24000), ("flac", "flac", 24000),
                             ("wav", "pcm_s16le", 24000)):
        r = requests.post(url, json={"model": "tts-1-hd", "input": TEXT, "voice": "nova", "response_format": fmt},
                          headers=h)
        assert r.status_code == 200, r.text
        assert_audio(r.content, codec, rate)
    assert r.content[4:8] == b"\xff\xff\xff\xff" and r.content[40:44] == b"\xff\xff\xff\xff"   # streamed wav
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": {"id": "voice_abc"},
                                 "response_format": "pcm", "speed": 2.0}, headers=h)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/pcm"
    assert len(r.content) == pcm_len(TEXT, 24000, 2.0)
    # SSE
    r = requests.post(url, json={"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "coral", "response_format": "mp3",
                                 "stream_format": "sse", "instructions": "cheerful"}, headers=h)
    assert r.headers["Content-Type"] == "text/event-stream"
    events = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["total_tokens"] > 0
    assert_audio(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), "mp3", 24000)
    # errors
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "alloy"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "alloy"},
                      headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = requests.post(url, json={"model": "tts-1", "input": "x" * 4097, "voice": "alloy"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert r.json()["error"]["code"] == "string_above_max_length"
    assert requests.post(url, json={"model": "tts-1", "input": "é" * 4096, "voice": "alloy", "response_format": "pcm"},
                         headers=h).status_code == 200
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "bogus"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice"
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "alloy", "stream_format": "sse"}, headers=h)
    assert r.status_code == 400
    r = requests.post(url, json={"model": "tts-1", "input": TEXT, "voice": "alloy", "speed": 5}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "speed"
    error_shape_ok("openai", requests.post(url, data="{", headers=h), 400)
    m = requests.get(f.url + "/v1/models", headers=h).json()
    assert m["object"] == "list" and "tts-1" in [x["id"] for x in m["data"]]


def test_openai_fm(fake):
    f = fake("openai_fm")
    url = f.url + "/api/generate"
    r = requests.post(url, data={"input": TEXT, "voice": "coral", "generation": "0b5d5c4e-1", "prompt": "calm"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert_audio(r.content, "mp3", 24000)
    r = requests.post(url, files={"input": (None, TEXT), "voice": (None, "alloy"), "response_format": (None, "wav")})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"
    assert_audio(r.content, "pcm_s16le", 24000)
    assert len(r.content) == 44 + pcm_len(TEXT, 24000)
    for data in ({"voice": "alloy"}, {"input": TEXT}, {"input": TEXT, "voice": "nobody"},
                 {"input": TEXT, "voice": "alloy", "response_format": "ogg"}):
        error_shape_ok("openai_fm", requests.post(url, data=data), 400)


def test_gpt_sovits_v2(fake):
    f = fake("gpt_sovits")
    base = {"text": TEXT, "text_lang": "en", "ref_audio_path": "/refs/a.wav", "prompt_lang": "en"}
    r = requests.post(f.url + "/tts", json=base)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav" and "Content-Length" in r.headers
    assert_audio(r.content, "pcm_s16le", 32000)
    r = requests.get(f.url + "/tts", params=dict(base, media_type="raw"))
    assert r.headers["Content-Type"] == "audio/raw" and len(r.content) == pcm_len(TEXT, 32000)
    r = requests.post(f.url + "/tts", json=dict(base, media_type="aac"))
    assert_audio(r.content, "aac", 32000)
    # streaming wav: 44-byte header with data size 0, then raw PCM chunks
    for sm in (True, 1, 2, 3, "true"):
        r = requests.post(f.url + "/tts", json=dict(base, streaming_mode=sm), stream=True)
        assert r.headers["Transfer-Encoding"] == "chunked"
        data = r.raw.read()
        assert data[:4] == b"RIFF" and struct.unpack("<I", data[40:44])[0] == 0
        assert len(data) == 44 + pcm_len(TEXT, 32000)
    r = requests.get(f.url + "/tts", params=dict(base, streaming_mode="1", media_type="ogg"))
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/ogg"
    assert_audio(r.content, "vorbis", 32000, "ogg")
    r = requests.post(f.url + "/tts", json=dict(base, streaming_mode=2, media_type="raw"))
    assert len(r.content) == pcm_len(TEXT, 32000)
    # errors
    for missing in ("text", "text_lang", "ref_audio_path", "prompt_lang"):
        r = requests.post(f.url + "/tts", json={k: v for k, v in base.items() if k != missing})
        assert r.status_code == 400 and r.json() == {"message": f"{missing} is required"}
    r = requests.post(f.url + "/tts", json=dict(base, media_type="ogg"))
    assert r.status_code == 400 and "ogg" in r.json()["message"]
    r = requests.post(f.url + "/tts", json=dict(base, media_type="mp3"))
    assert r.status_code == 400 and "message" in r.json()
    r = requests.get(f.url + "/tts", params={"text": TEXT, "ref_audio_path": "a.wav"})   # the documented crash
    error_shape_ok("gpt_sovits", r, 500)
    assert requests.get(f.url + "/set_gpt_weights", params={"weights_path": "x.ckpt"}).json() == {"message": "success"}
    assert requests.get(f.url + "/set_sovits_weights").status_code == 400


def test_gpt_sovits_v1(fake):
    f = fake("gpt_sovits", api="v1")
    r = requests.post(f.url + "/", json={"text": TEXT, "text_language": "en", "refer_wav_path": "r.wav",
                                         "prompt_text": "hi", "prompt_language": "en"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert_audio(r.content, "pcm_s16le", 32000)
    r = requests.get(f.url + "/", params={"text": TEXT, "text_language": "zh"})
    assert r.status_code == 200 and len(r.content) == 44 + pcm_len(TEXT, 32000)
    r = requests.post(f.url + "/", json={"text": TEXT})
    assert r.status_code == 400 and r.json()["code"] == 400 and r.json()["message"]
    r = requests.get(f.url + "/", params={"text": TEXT})
    error_shape_ok("gpt_sovits_v1", r, 500)
    g = fake("gpt_sovits_v1", stream_mode="normal", v1_default_ref=None)
    r = requests.post(g.url + "/", json={"text": TEXT, "text_language": "en"})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = requests.post(g.url + "/", json={"text": TEXT, "text_language": "en", "refer_wav_path": "r.wav",
                                         "prompt_text": "hi", "prompt_language": "en"})
    assert struct.unpack("<I", r.content[40:44])[0] == 0 and len(r.content) == 44 + pcm_len(TEXT, 32000)
    assert requests.post(g.url + "/set_model", json={"gpt_model_path": "a"}).json() == {"code": 0, "message": "Success"}


def test_xtts(fake):
    f = fake("xtts")
    r = requests.post(f.url + "/tts_to_audio/", json={"text": TEXT, "speaker_wav": "female", "language": "en"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"
    assert_audio(r.content, "pcm_f32le", 24000)
    assert struct.unpack("<H", r.content[20:22])[0] == 3          # IEEE float fmt
    r = requests.get(f.url + "/tts_stream", params={"text": TEXT, "speaker_wav": "male.wav", "language": "en"},
                     stream=True)
    assert r.headers["Content-Type"] == "audio/x-wav" and r.headers["Transfer-Encoding"] == "chunked"
    data = r.raw.read()
    assert struct.unpack("<I", data[40:44])[0] == 0 and struct.unpack("<H", data[34:36])[0] == 16
    assert struct.unpack("<I", data[24:28])[0] == 24000 and len(data) == 44 + pcm_len(TEXT, 24000)
    r = requests.post(f.url + "/tts_to_audio/", json={"text": TEXT, "speaker_wav": "female", "language": "xx"})
    assert r.status_code == 400 and r.json() == {"detail": "Language code sent is either unsupported or misspelled."}
    r = requests.post(f.url + "/tts_to_audio/", json={"text": TEXT, "speaker_wav": "nobody", "language": "en"})
    assert r.status_code == 500 and r.json()["detail"].startswith("Error: ")
    r = requests.post(f.url + "/tts_to_audio/", json={"text": TEXT})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "speaker_wav"]
    assert "female" in requests.get(f.url + "/speakers_list").json()
    assert requests.get(f.url + "/speakers").json()[0].keys() == {"name", "voice_id", "preview_url"}
    assert requests.get(f.url + "/languages").json()["languages"]["English"] == "en"


def test_openvoice(fake):
    f = fake("openvoice")
    r = requests.get(f.url + "/synthesize_speech/", params={"text": TEXT, "voice": "demo_speaker1",
                                                            "accent": "en-us", "speed": "1.0"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav" and float(r.headers["x-elapsed-time"]) > 0
    assert_audio(r.content, "pcm_s16le", 22050)
    r = requests.get(f.url + "/base_tts/", params={"text": TEXT, "accent": "fr"})
    assert_audio(r.content, "pcm_s16le", 22050)
    r = requests.get(f.url + "/synthesize_speech/", params={"text": TEXT, "voice": "alice"})
    assert r.status_code == 400 and r.json() == {"detail": "No matching voice found."}
    r = requests.post(f.url + "/upload_audio/", data={"audio_file_label": "alice"},
                      files={"file": ("a.txt", b"not audio")})
    assert r.status_code == 200 and "error" in r.json()
    r = requests.post(f.url + "/upload_audio/", data={"audio_file_label": "alice"},
                      files={"file": ("a.wav", ag.synth("ref", "x", "wav", 22050), "audio/wav")})
    assert r.status_code == 200 and "message" in r.json()
    assert requests.get(f.url + "/synthesize_speech/", params={"text": TEXT, "voice": "alice"}).status_code == 200
    r = requests.get(f.url + "/synthesize_speech/", params={"voice": "alice"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "text"]


def test_cosyvoice(fake):
    f = fake("cosyvoice")
    r = requests.post(f.url + "/inference_sft", data={"tts_text": TEXT, "spk_id": "中文女"})
    assert r.status_code == 200 and "Content-Type" not in r.headers and r.headers["Transfer-Encoding"] == "chunked"
    assert len(r.content) == pcm_len(TEXT, 22050)
    wav = ag.synth("ref", "x", "wav", 16000)
    r = requests.post(f.url + "/inference_zero_shot", data={"tts_text": TEXT, "prompt_text": "ref"},
                      files={"prompt_wav": ("p.wav", wav, "audio/wav")})
    assert r.status_code == 200 and len(r.content) == pcm_len(TEXT, 22050)
    r = requests.get(f.url + "/inference_cross_lingual", files={"tts_text": (None, TEXT), "prompt_wav": ("p.wav", wav)})
    assert r.status_code == 200 and "Content-Type" not in r.headers
    r = requests.post(f.url + "/inference_instruct2", data={"tts_text": TEXT, "instruct_text": "happy"},
                      files={"prompt_wav": ("p.wav", wav)})
    assert r.status_code == 200 and len(r.content) == pcm_len(TEXT, 22050)
    g = fake("cosyvoice", sample_rate=24000)
    r = requests.post(g.url + "/inference_instruct", data={"tts_text": TEXT, "spk_id": "中文男", "instruct_text": "x"})
    assert len(r.content) == pcm_len(TEXT, 24000)
    r = requests.post(f.url + "/inference_sft", data={"tts_text": TEXT})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"type": "missing", "loc": ["body", "spk_id"], "msg": "Field required", "input": None}]
    r = requests.get(f.url + "/inference_sft", params={"tts_text": TEXT, "spk_id": "中文女"})   # Form(): query ignored
    assert r.status_code == 422
    r = requests.post(f.url + "/inference_zero_shot", data={"tts_text": TEXT, "prompt_text": "r", "prompt_wav": "p"})
    assert r.status_code == 422
    # prompt_wav goes through load_wav(f, 16000): garbage, a truncated FLAC or a rate under 16 kHz is a plain 500
    for bad in (b"not audio at all" * 10, ag.encode(ag.pcm("ref", "x", 16000), 16000, "flac")[:100],
                ag.synth("ref", "x", "wav", 8000)):
        r = requests.post(f.url + "/inference_zero_shot", data={"tts_text": TEXT, "prompt_text": "r"},
                          files={"prompt_wav": ("p.wav", bad)})
        assert r.status_code == 500 and r.text == "Internal Server Error", r.text
    with pytest.raises(requests.exceptions.ChunkedEncodingError):   # unknown speaker: 200, then the stream dies
        requests.post(f.url + "/inference_sft", data={"tts_text": TEXT, "spk_id": "nobody"}, timeout=5)


def _msgpack(obj):
    if isinstance(obj, dict):
        return bytes([0x80 | len(obj)]) + b"".join(_msgpack(k) + _msgpack(v) for k, v in obj.items())
    if isinstance(obj, str):
        b = obj.encode()
        return bytes([0xd9, len(b)]) + b
    if isinstance(obj, bytes):
        return bytes([0xc5]) + struct.pack(">H", len(obj)) + obj
    if isinstance(obj, bool):
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return bytes([0xcd]) + struct.pack(">H", obj)
    if isinstance(obj, list):
        return bytes([0x90 | len(obj)]) + b"".join(_msgpack(x) for x in obj)
    raise TypeError(obj)


def test_fish(fake):
    f = fake("fish", api_key="fk")
    h = {"Authorization": "Bearer fk"}
    r = requests.post(f.url + "/v1/tts", json={"text": TEXT}, headers=h)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav"
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert_audio(r.content, "pcm_s16le", 44100)
    r = requests.post(f.url + "/v1/tts", json={"text": TEXT, "format": "pcm", "reference_id": "abc"}, headers=h)
    assert r.headers["Content-Type"] == "application/octet-stream" and len(r.content) == pcm_len(TEXT, 44100)
    r = requests.post(f.url + "/v1/tts", json={"text": TEXT, "format": "mp3"}, headers=h)
    assert r.headers["Content-Type"] == "audio/mpeg"
    assert_audio(r.content, "mp3", 44100)
    r = requests.post(f.url + "/v1/tts", json={"text": TEXT, "format": "opus"}, headers=h)
    assert_audio(r.content, "opus", 48000)
    r = requests.post(f.url + "/v1/tts", json={"text": TEXT, "streaming": True}, headers=h)
    assert r.headers["Transfer-Encoding"] == "chunked" and struct.unpack("<I", r.content[40:44])[0] == 0
    body = _msgpack({"text": TEXT, "format": "pcm", "chunk_length": 300,
                     "references": [{"audio": b"\x00\x01" * 100, "text": "ref"}]})
    r = requests.post(f.url + "/v1/tts", data=body, headers=dict(h, **{"Content-Type": "application/msgpack"}))
    assert r.status_code == 200 and len(r.content) == pcm_len(TEXT, 44100)
    assert requests.get(f.url + "/v1/health").json() == {"status": "ok"}
    assert requests.post(f.url + "/v1/health").json() == {"status": "ok"}
    error_shape_ok("fish", requests.post(f.url + "/v1/tts", json={"text": TEXT}), 401)
    error_shape_ok("fish", requests.post(f.url + "/v1/tts", json={"text": TEXT, "format": "aac"}, headers=h), 400)
    error_shape_ok("fish", requests.post(f.url + "/v1/tts", json={"text": TEXT, "format": "mp3", "streaming": True},
                                         headers=h), 400)
    error_shape_ok("fish", requests.post(f.url + "/v1/tts", json={"text": TEXT, "chunk_length": 50}, headers=h), 400)
    g = fake("fish", msgpack=False)
    r = requests.post(g.url + "/v1/tts", data=body, headers={"Content-Type": "application/msgpack"})
    error_shape_ok("fish", r, 415)


def test_elevenlabs(fake):
    f = fake("elevenlabs", api_key="xi")
    h = {"xi-api-key": "xi"}
    url = f.url + f"/v1/text-to-speech/{EL_VOICE}"
    r = requests.post(url, json={"text": TEXT, "model_id": "eleven_multilingual_v2"}, headers=h)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert_audio(r.content, "mp3", 44100)
    r = requests.post(url, params={"output_format": "mp3_22050_32"}, json={"text": TEXT}, headers=h)
    assert_audio(r.content, "mp3", 22050)
    for rate in (16000, 22050, 24000, 44100):
        r = requests.post(url + "/stream", params={"output_format": f"pcm_{rate}"},
                          json={"text": TEXT, "voice_settings": {"stability": 0.5, "speed": 1.0}}, headers=h)
        assert r.headers["Transfer-Encoding"] == "chunked" and len(r.content) == pcm_len(TEXT, rate)
    r = requests.post(url, json={"text": TEXT})
    assert r.status_code == 401 and r.json()["detail"]["status"] == "invalid_api_key"
    r = requests.post(url, json={"text": TEXT}, headers={"xi-api-key": "bad"})
    assert r.status_code == 401 and r.json()["detail"]["status"] == "invalid_api_key"
    r = requests.post(f.url + "/v1/text-to-speech/nope", json={"text": TEXT}, headers=h)
    assert r.status_code == 404 and r.json()["detail"]["status"] == "voice_not_found"
    r = requests.post(url, json={"model_id": "eleven_multilingual_v2"}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"]
    assert requests.post(url, params={"output_format": "wav_1"}, json={"text": TEXT}, headers=h).status_code == 422
    v = requests.get(f.url + "/v1/voices", headers=h).json()["voices"]
    assert EL_VOICE in [x["voice_id"] for x in v]
    assert requests.get(f.url + "/v1/models", headers=h).json()[0]["model_id"]


def test_azure(fake):
    f = fake("azure", api_key="az")
    h = {"Ocp-Apim-Subscription-Key": "az", "Content-Type": "application/ssml+xml"}
    url = f.url + "/cognitiveservices/v1"
    body = SSML.format(TEXT).encode()

    def post(fmt, headers=h, data=body):
        return requests.post(url, data=data, headers=dict(headers, **{"X-Microsoft-OutputFormat": fmt}))

    r = post("riff-24khz-16bit-mono-pcm")
    assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
    assert_audio(r.content, "pcm_s16le", 24000)
    assert len(post("raw-16khz-16bit-mono-pcm").content) == pcm_len(TEXT, 16000)
    assert len(post("raw-24khz-16bit-mono-pcm").content) == pcm_len(TEXT, 24000)
    r = post("audio-24khz-48kbitrate-mono-mp3")
    assert r.headers["Content-Type"] == "audio/mpeg"
    assert_audio(r.content, "mp3", 24000)
    assert_audio(post("ogg-24khz-16bit-mono-opus").content, "opus", 48000)
    tok = requests.post(f.url + "/sts/v1.0/issueToken", headers={"Ocp-Apim-Subscription-Key": "az"}).text
    r = post("riff-16khz-16bit-mono-pcm", headers={"Authorization": "Bearer " + tok,
                                                   "Content-Type": "application/ssml+xml"})
    assert_audio(r.content, "pcm_s16le", 16000)
    r = post("riff-24khz-16bit-mono-pcm", headers={"Content-Type": "application/ssml+xml"})
    assert r.status_code == 401 and r.content == b""
    r = post("riff-24khz-16bit-mono-pcm", headers={"Ocp-Apim-Subscription-Key": "az", "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.content == b""
    for bad in (b"<speak><voice name='en-US-JennyNeural'>unclosed", b"<speak>no voice</speak>",
                SSML.replace("JennyNeural", "NobodyNeural").format("x").encode()):
        r = post("riff-24khz-16bit-mono-pcm", data=bad)
        assert r.status_code == 400 and r.content == b""
    assert post("riff-24khz-99bit-mono-pcm").status_code == 400
    voices = requests.get(f.url + "/cognitiveservices/voices/list", headers={"Ocp-Apim-Subscription-Key": "az"}).json()
    assert "en-US-JennyNeural" in [v["ShortName"] for v in voices]


def test_node(fake):
    f = fake("node", engine="xtts", voices=["default", "alice"])
    r = requests.post(f.url + "/synthesize", json={"text": TEXT, "voice": "alice", "format": "wav", "speed": 1.0,
                                                   "language": "en", "reference": {"ref_audio_path": "a.wav"}})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/wav" and r.headers["X-Node-Id"]
    assert_audio(r.content, "pcm_s16le", 24000)
    r = requests.post(f.url + "/synthesize", json={"text": TEXT, "voice": "alice", "format": "mp3"})
    assert_audio(r.content, "mp3", 24000)
    error_shape_ok("node", requests.post(f.url + "/synthesize", json={"voice": "alice"}), 400)
    error_shape_ok("node", requests.post(f.url + "/synthesize", json={"text": "x", "voice": "bob"}), 404)
    assert requests.get(f.url + "/health").json()["status"] == "healthy"
    assert requests.get(f.url + "/info").json()["engine_type"] == "xtts"
    assert requests.post(f.url + "/command", json={"command": "standby"}).json()["success"] is True
    error_shape_ok("node", requests.post(f.url + "/synthesize", json={"text": "x"}), 503)
    requests.post(f.url + "/command", json={"command": "activate"})
    assert requests.post(f.url + "/synthesize", json={"text": "x"}).status_code == 200


# ---------------------------------------------------------------------------------------------
# the fault matrix: every kind × every fault
# ---------------------------------------------------------------------------------------------

STATUS_4XX = {"openai": 400, "openai_fm": 400, "gpt_sovits": 400, "gpt_sovits_v1": 400, "xtts": 400, "openvoice": 400,
              "cosyvoice": 422, "fish": 400, "elevenlabs": 401, "azure": 400, "node": 400}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_fault_matrix(fake, kind, fault):
    f = fake(kind, chunk_bytes=4096)
    normal = synth(kind, f.url)
    assert normal.status_code == 200, normal.text[:300]
    full = normal.content
    if fault == "status_500":
        f.set_fault(fault, count=1)
        error_shape_ok(kind, synth(kind, f.url), 500)
    elif fault == "status_429":
        f.set_fault(fault, count=1, retry_after=3)
        r = synth(kind, f.url)
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        if kind != "azure":
            error_shape_ok(kind, r, 429)
    elif fault == "status_4xx":
        f.set_fault(fault, count=1)
        error_shape_ok(kind, synth(kind, f.url), STATUS_4XX[kind])
    elif fault == "slow_first_byte":
        f.set_fault(fault, count=1, seconds=1.0)
        with pytest.raises(requests.exceptions.ReadTimeout):
            synth(kind, f.url, timeout=0.3)
    elif fault == "refuse":
        f.set_fault(fault)
        with pytest.raises(requests.exceptions.ConnectionError) as e:
            synth(kind, f.url)
        assert "refused" in str(e.value)
        f.clear_fault()
        assert synth(kind, f.url).content == full
        return
    elif fault == "reset_before":
        f.set_fault(fault, count=1)
        with pytest.raises(requests.exceptions.ConnectionError):
            synth(kind, f.url)
    elif fault == "reset_after":
        f.set_fault(fault, count=1, bytes=100)
        try:
            r = synth(kind, f.url, stream=True)
        except requests.exceptions.ConnectionError:
            pass       # the RST beat the client to the headers
        else:          # headers and 100 bytes arrived, then the connection was reset
            assert r.status_code == 200
            with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
                r.content
    elif fault == "garbage":
        f.set_fault(fault, count=1)
        with pytest.raises(requests.exceptions.ConnectionError):
            synth(kind, f.url)
    elif fault == "wrong_content_type":
        f.set_fault(fault, count=1)
        r = synth(kind, f.url)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html") and r.content == full
        f.set_fault(fault, count=1, content_type="audio/flac")
        assert synth(kind, f.url).headers["Content-Type"] == "audio/flac"
    elif fault == "truncated":
        f.set_fault(fault, count=1)
        try:
            r = synth(kind, f.url)
            assert r.status_code == 200 and len(r.content) < len(full)
        except requests.exceptions.ChunkedEncodingError:
            pass
    # the fault was for one request only: the next one is normal again
    again = synth(kind, f.url)
    assert again.status_code == 200 and again.content == full


# ---------------------------------------------------------------------------------------------
# control endpoint, scope, streaming, latency, CLI
# ---------------------------------------------------------------------------------------------

def test_http_control_and_recording(fake):
    f = fake("fish")
    c = f.url + "/__fake/"
    assert requests.post(c + "fault", json={"fault": "status_500", "count": 2}).json()["ok"]
    assert requests.get(f.url + "/v1/health").status_code == 200          # default scope: synthesis only
    assert [synth("fish", f.url).status_code for _ in range(3)] == [500, 500, 200]
    st = requests.get(c + "stats").json()
    assert st["calls"] == 3 and st["ok"] == 1 and st["fault"] is None and st["kind"] == "fish"
    assert f.calls == 3 and len(f.requests) == 4
    method, path, headers, body = f.requests[-1]
    assert method == "POST" and path == "/v1/tts" and json.loads(body)["text"] == TEXT
    assert requests.get(c + "requests").json()[-1]["path"] == "/v1/tts"
    requests.post(c + "fault", json={"fault": "status_429", "scope": "all"})
    assert requests.get(f.url + "/v1/health").status_code == 429
    assert requests.post(c + "reset").json()["ok"]
    assert requests.get(f.url + "/v1/health").status_code == 200 and f.calls == 0 and len(f.requests) == 1
    assert requests.post(c + "fault", json={"fault": "nope"}).status_code == 400
    # refuse over HTTP, reopened after `seconds`
    requests.post(c + "fault", json={"fault": "refuse", "seconds": 0.5})
    time.sleep(0.25)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f.url + "/v1/health", timeout=2)
    time.sleep(0.6)
    assert requests.get(f.url + "/v1/health", timeout=2).status_code == 200


def test_streaming_chunks_arrive_with_delay(fake):
    f = fake("openai", chunk_delay=0.15, chunk_bytes=8000)
    t0 = time.time()
    r = requests.post(f.url + "/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alloy",
                                                        "response_format": "pcm"}, stream=True)
    first = None
    total = 0
    for piece in r.iter_content(chunk_size=None):
        if first is None:
            first = time.time() - t0
        total += len(piece)
    end = time.time() - t0
    assert total == pcm_len(TEXT, 24000)          # 100800 bytes → 13 chunks, 12 delays of 0.15 s
    assert end >= 12 * 0.15 and first < end / 2


def test_latency_and_config(fake):
    f = fake("node", latency=0.3)
    t0 = time.time()
    assert synth("node", f.url).status_code == 200
    assert time.time() - t0 >= 0.3
    requests.post(f.url + "/__fake/config", json={"latency": 0, "ms_per_char": 10})
    assert len(synth("node", f.url).content) == pcm_len(TEXT, 24000, ms=10)


def test_cli_ready_line():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    p = subprocess.Popen([sys.executable, "-m", "fakes.engines", "--kind", "openai", "--port", "0", "--latency",
                          "0.05"], cwd=os.path.dirname(HERE), stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = p.stdout.readline().split()
        assert line[0] == "READY"
        port = int(line[1])
        r = synth("openai", f"http://127.0.0.1:{port}")
        assert r.status_code == 200 and len(r.content) == pcm_len(TEXT, 24000)
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


# ---- library references (voice cloning): what each clone-capable fake receives and records ----

def _ref_wav(seconds=1.0, rate=24000):
    return ag.wav(ag.synth("reference speech " * 4, "ref-speaker", "pcm", rate, ms_per_char=1000 * seconds / 68),
                  rate)


def _multipart(fields, files):
    """(body, content type) of a multipart/form-data request."""
    b = "----fakeboundary7"
    out = b""
    for k, v in fields.items():
        out += f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
    for k, (fn, data) in files.items():
        out += (f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{fn}\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _same_audio(got, want):
    from fakes.engines import wav_info
    a, b = wav_info(got), wav_info(want)
    return a is not None and a == b


def test_cosyvoice_and_fish_record_inline_references(fake):
    ref = _ref_wav()
    f = fake("cosyvoice")
    body, ct = _multipart({"tts_text": TEXT, "prompt_text": "what the reference says"}, {"prompt_wav": ("p.wav", ref)})
    r = requests.post(f.url + "/inference_zero_shot", data=body, headers={"Content-Type": ct})
    assert r.status_code == 200 and len(r.content) == pcm_len(TEXT, 22050)
    (got,) = f.references
    assert got["via"] == "inline" and got["text"] == "what the reference says" and _same_audio(got["audio"], ref)
    assert got["format"] == "wav" and got["rate"] == 24000 and got["pcm"] == ref[44:]
    # FLAC (what the hub sends when it has the compact form): decoded, sized by STREAMINFO
    pcm16 = ag.pcm("the reference", "x", 16000)
    flac = ag.encode(pcm16, 16000, "flac")
    body, ct = _multipart({"tts_text": TEXT}, {"prompt_wav": ("p.flac", flac)})
    r = requests.post(f.url + "/inference_cross_lingual", data=body, headers={"Content-Type": ct})
    assert r.status_code == 200
    got = f.references[1]
    assert got["format"] == "flac" and got["rate"] == 16000 and got["pcm"] == pcm16
    # libsndfile reads any WAV (float, stereo...) too
    stereo = subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "24000", "-ac", "1", "-i", "pipe:0",
                             "-ac", "2", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"], input=ref[44:],
                            capture_output=True, check=True).stdout
    body, ct = _multipart({"tts_text": TEXT}, {"prompt_wav": ("p.wav", stereo)})
    assert requests.post(f.url + "/inference_cross_lingual", data=body, headers={"Content-Type": ct}).status_code == 200
    got = f.references[2]
    assert got["format"] == "wav" and got["rate"] == 24000 and got["frames"] == (len(ref) - 44) // 2
    g = fake("fish")
    body = _msgpack({"text": TEXT, "format": "wav", "references": [{"audio": ref, "text": "said"}]})
    r = requests.post(g.url + "/v1/tts", data=body, headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 200
    (got,) = g.references
    assert got["text"] == "said" and got["body"] == "msgpack" and _same_audio(got["audio"], ref)
    rows = requests.get(g.url + "/__fake/references").json()["references"]
    assert rows[0]["wav"]["rate"] == 24000 and rows[0]["bytes"] == len(ref)


def test_openvoice_upload_then_label_and_forget(fake):
    ref = _ref_wav()
    f = fake("openvoice")
    q = {"text": TEXT, "voice": "ttshub-0123456789abcdef"}
    assert requests.get(f.url + "/synthesize_speech/", params=q).status_code == 400
    body, ct = _multipart({"audio_file_label": "ttshub-0123456789abcdef"},
                          {"file": ("ttshub-0123456789abcdef.wav", ref)})
    r = requests.post(f.url + "/upload_audio/", data=body, headers={"Content-Type": ct})
    assert r.status_code == 200 and "message" in r.json()
    assert requests.get(f.url + "/synthesize_speech/", params=q).status_code == 200
    assert f.reference_uses == {"ttshub-0123456789abcdef": 1}
    assert _same_audio(f.references[0]["audio"], ref) and f.references[0]["label"] == "ttshub-0123456789abcdef"
    assert requests.post(f.url + "/__fake/forget").status_code == 200
    r = requests.get(f.url + "/synthesize_speech/", params=q)
    assert r.status_code == 400 and r.json() == {"detail": "No matching voice found."}
    # the built-in labels survive a forget
    assert requests.get(f.url + "/synthesize_speech/", params=dict(q, voice="demo_speaker0")).status_code == 200


def test_elevenlabs_voices_add_speak_delete(fake):
    ref = _ref_wav()
    f = fake("elevenlabs", api_key="xi")
    h = {"xi-api-key": "xi"}
    body, ct = _multipart({"name": "ttshub-v1-0123456789abcdef", "description": "d"}, {"files": ("v.wav", ref)})
    assert requests.post(f.url + "/v1/voices/add", data=body, headers={"Content-Type": ct}).status_code == 401
    r = requests.post(f.url + "/v1/voices/add", data=body, headers=dict(h, **{"Content-Type": ct}))
    assert r.status_code == 200
    vid = r.json()["voice_id"]
    names = {v["voice_id"]: v["name"] for v in requests.get(f.url + "/v1/voices", headers=h).json()["voices"]}
    assert names[vid] == "ttshub-v1-0123456789abcdef"
    r = requests.post(f.url + f"/v1/text-to-speech/{vid}", json={"text": TEXT}, headers=h)
    assert r.status_code == 200 and f.reference_uses == {vid: 1}
    assert _same_audio(f.references[0]["audio"], ref)
    assert requests.delete(f.url + f"/v1/voices/{vid}", headers=h).status_code == 200
    assert f.drops == [vid]
    r = requests.post(f.url + f"/v1/text-to-speech/{vid}", json={"text": TEXT}, headers=h)
    assert r.status_code == 404 and r.json()["detail"]["status"] == "voice_not_found"
    assert requests.delete(f.url + f"/v1/voices/{vid}", headers=h).status_code == 400
    bad, ct = _multipart({"name": "x"}, {"files": ("v.wav", b"not audio")})
    assert requests.post(f.url + "/v1/voices/add", data=bad, headers=dict(h, **{"Content-Type": ct})).status_code == 400


def test_gpt_sovits_and_xtts_read_the_shared_folder(fake, tmp_path):
    ref = _ref_wav()
    (tmp_path / "v1-0123456789abcdef.wav").write_bytes(ref)
    f = fake("gpt_sovits", ref_dir=str(tmp_path), ref_dir_engine="/engine/refs")
    p = {"text": TEXT, "text_lang": "en", "prompt_lang": "en", "prompt_text": "said",
         "ref_audio_path": "/engine/refs/v1-0123456789abcdef.wav", "streaming_mode": 0}
    r = requests.post(f.url + "/tts", json=p)
    assert r.status_code == 200, r.text
    (got,) = f.references
    assert got["via"] == "file" and got["text"] == "said" and _same_audio(got["audio"], ref)
    r = requests.post(f.url + "/tts", json=dict(p, ref_audio_path="/engine/refs/missing.wav"))
    assert r.status_code == 400 and "No such file" in r.json()["Exception"]
    x = fake("xtts", ref_dir=str(tmp_path))
    body = {"text": TEXT, "speaker_wav": "v1-0123456789abcdef.wav", "language": "en"}
    assert requests.post(x.url + "/tts_to_audio/", json=body).status_code == 200
    assert _same_audio(x.references[0]["audio"], ref)
    r = requests.post(x.url + "/tts_to_audio/", json=dict(body, speaker_wav="gone-0000000000000000.wav"))
    assert r.status_code == 500 and "not found" in r.json()["detail"]
    y = fake("xtts", ref_dir=str(tmp_path), ref_dir_engine="/srv/xtts/refs")
    r = requests.get(y.url + "/tts_stream", params=dict(body, speaker_wav="/srv/xtts/refs/v1-0123456789abcdef.wav"))
    assert r.status_code == 200 and _same_audio(y.references[0]["audio"], ref)


def test_node_reference_by_sha256(fake):
    import hashlib
    ref = _ref_wav()
    sha = hashlib.sha256(ref).hexdigest()
    f = fake("node")
    body = {"text": TEXT, "voice": "v1", "format": "wav", "reference_sha256": sha, "reference_text": "said"}
    r = requests.post(f.url + "/synthesize", json=body)
    assert r.status_code == 409 and r.json()["code"] == "reference_missing"
    r = requests.post(f.url + "/synthesize", json=dict(body, reference_audio=base64.b64encode(ref[:-2]).decode()))
    assert r.status_code == 400        # the bytes do not match the sha256
    r = requests.post(f.url + "/synthesize", json=dict(body, reference_audio=base64.b64encode(ref).decode()))
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert _same_audio(f.references[0]["audio"], ref) and f.references[0]["text"] == "said"
    assert requests.post(f.url + "/synthesize", json=body).status_code == 200
    assert f.reference_uses == {sha: 1}
    requests.post(f.url + "/__fake/forget")
    assert requests.post(f.url + "/synthesize", json=body).status_code == 409
