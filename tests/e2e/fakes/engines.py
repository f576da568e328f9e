"""Faithful fakes of the TTS engine wire protocols ttshub talks to (design/ENGINES.md).

Python API::

    from fakes.engines import FakeEngine
    f = FakeEngine("openai", api_key=None, latency=0.0, chunk_delay=0.0, ms_per_char=60,
                   sample_rate=None, **options).start()
    f.url, f.port, f.calls, f.requests
    f.set_fault("status_500", count=2)        # or any fault of FAULTS, with its params
    f.clear_fault(); f.reset(); f.stop()

HTTP control on the same port (never faulted, never recorded)::

    POST /__fake/fault   {"fault": name, ...params, "count": N}   (count absent = until cleared)
    POST /__fake/reset   clears fault, counters and recorded requests
    POST /__fake/config  {"latency", "chunk_delay", "ms_per_char", "chunk_bytes"}
    GET  /__fake/stats   {"calls", "ok", "requests", "fault", "kind", ...}
    GET  /__fake/requests  recorded requests (bodies as text, cut at 4 KiB)

CLI (from tests/e2e): ``/usr/bin/python3 -m fakes.engines --kind openai --port 0 [--latency 0.3]``
prints ``READY <port>`` once listening and serves until SIGINT/SIGTERM.
"""
import argparse
import base64
import collections
import hashlib
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

try:
    from . import audio_gen as ag
except ImportError:  # run as a plain script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fakes import audio_gen as ag

KINDS = ("openai", "openai_fm", "gpt_sovits", "gpt_sovits_v1", "xtts", "openvoice", "cosyvoice", "fish",
         "elevenlabs", "azure", "node")
FAULTS = ("status_500", "status_429", "status_4xx", "slow_first_byte", "refuse", "reset_before", "reset_after",
          "garbage", "wrong_content_type", "truncated")

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
DEFAULT_CHUNK_BYTES = 16384


# --------------------------------------------------------------------------------------------
# requests and responses
# --------------------------------------------------------------------------------------------

class Upload:
    def __init__(self, filename, content_type, data):
        self.filename, self.content_type, self.data = filename, content_type, data

    def __repr__(self):
        return f"Upload({self.filename!r}, {len(self.data)} bytes)"


def parse_multipart(body, ctype):
    m = re.search(r'boundary="?([^";]+)"?', ctype or "")
    out = {}
    if not m:
        return None
    sep = b"--" + m.group(1).encode("latin-1")
    for part in body.split(sep)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, _, data = part.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        hdrs = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        disp = hdrs.get("content-disposition", "")
        nm = re.search(r'(?:^|;)\s*name="([^"]*)"', disp)
        fn = re.search(r'filename="([^"]*)"', disp)
        if not nm:
            continue
        if fn:
            out[nm.group(1)] = Upload(fn.group(1), hdrs.get("content-type", "application/octet-stream"), data)
        else:
            out[nm.group(1)] = data.decode("utf-8", "replace")
    return out


def msgpack_unpack(b):
    """Minimal msgpack decoder (maps, arrays, str, bin, ints, floats, bool, nil)."""
    def rd(i):
        t = b[i]
        if t <= 0x7f:
            return t, i + 1
        if 0x80 <= t <= 0x8f:
            return rmap(t & 0x0f, i + 1)
        if 0x90 <= t <= 0x9f:
            return rarr(t & 0x0f, i + 1)
        if 0xa0 <= t <= 0xbf:
            n = t & 0x1f
            return b[i + 1:i + 1 + n].decode("utf-8"), i + 1 + n
        if t >= 0xe0:
            return t - 0x100, i + 1
        if t == 0xc0:
            return None, i + 1
        if t == 0xc2:
            return False, i + 1
        if t == 0xc3:
            return True, i + 1
        fixed = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q",
                 0xca: ">f", 0xcb: ">d"}
        if t in fixed:
            sz = struct.calcsize(fixed[t])
            return struct.unpack(fixed[t], b[i + 1:i + 1 + sz])[0], i + 1 + sz
        lens = {0xc4: ">B", 0xc5: ">H", 0xc6: ">I", 0xd9: ">B", 0xda: ">H", 0xdb: ">I",
                0xdc: ">H", 0xdd: ">I", 0xde: ">H", 0xdf: ">I"}
        if t in lens:
            sz = struct.calcsize(lens[t])
            n = struct.unpack(lens[t], b[i + 1:i + 1 + sz])[0]
            j = i + 1 + sz
            if t in (0xc4, 0xc5, 0xc6):
                return bytes(b[j:j + n]), j + n
            if t in (0xd9, 0xda, 0xdb):
                return b[j:j + n].decode("utf-8"), j + n
            if t in (0xdc, 0xdd):
                return rarr(n, j)
            return rmap(n, j)
        raise ValueError(f"unsupported msgpack type 0x{t:02x}")

    def rarr(n, i):
        out = []
        for _ in range(n):
            v, i = rd(i)
            out.append(v)
        return out, i

    def rmap(n, i):
        out = {}
        for _ in range(n):
            k, i = rd(i)
            v, i = rd(i)
            out[k] = v
        return out, i

    v, _ = rd(0)
    return v


class Req:
    def __init__(self, method, target, headers, body):
        self.method = method
        self.target = target
        parts = urlsplit(target)
        self.path = unquote(parts.path)
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body
        self._form = None

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def ctype(self):
        return (self.headers.get("Content-Type") or "").lower()

    def json(self):
        """Parsed JSON body, or raises ValueError."""
        return json.loads(self.body.decode("utf-8"))

    def form(self):
        """Form fields from an urlencoded or multipart body ({} for anything else)."""
        if self._form is None:
            if self.ctype.startswith("multipart/form-data"):
                self._form = parse_multipart(self.body, self.headers.get("Content-Type")) or {}
            elif self.ctype.startswith("application/x-www-form-urlencoded"):
                self._form = {k: v[0] for k, v in
                              parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            else:
                self._form = {}
        return self._form


class Resp:
    """status, headers (list of pairs), body bytes or a list of chunks (stream=True → chunked)."""

    def __init__(self, status=200, body=b"", ctype=None, headers=None, chunks=None, abort=False, ok=False,
                 close=False):
        self.status = status
        self.headers = list(headers or [])
        if ctype is not None:
            self.headers.insert(0, ("Content-Type", ctype))
        self.chunks = chunks          # list of bytes → Transfer-Encoding: chunked
        self.body = body
        self.abort = abort            # chunked stream ends without the final chunk (engine crashed mid-stream)
        self.ok = ok                  # a successful synthesis
        self.close = close            # close the connection with no response at all

    def all_bytes(self):
        return b"".join(self.chunks) if self.chunks is not None else self.body


def jresp(status, obj, headers=None, ctype="application/json"):
    return Resp(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), ctype, headers)


def text_resp(status, text, ctype="text/plain; charset=utf-8", headers=None):
    return Resp(status, text.encode("utf-8"), ctype, headers)


def empty_resp(status, headers=None):
    return Resp(status, b"", None, headers)


def uvicorn_500():
    return text_resp(500, "Internal Server Error")


def html_500():
    return Resp(500, b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
                     b"<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable to "
                     b"complete your request.</p>\n", "text/html; charset=utf-8")


def fastapi_422(missing, where="body", pydantic=2):
    """FastAPI validation error for missing fields."""
    det = []
    for name in missing:
        if pydantic == 2:
            det.append({"type": "missing", "loc": [where, name], "msg": "Field required", "input": None})
        else:
            det.append({"loc": [where, name], "msg": "field required", "type": "value_error.missing"})
    return jresp(422, {"detail": det})


def to_float(v, default):
    if v is None or v == "":
        return default
    return float(v)


def to_bool(v, default=False):
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def wav_info(b):
    """What a reference WAV holds: {rate, channels, bits, frames, seconds, pcm_sha256} (None when not a WAV)."""
    import hashlib
    import io
    import wave
    try:
        with wave.open(io.BytesIO(b)) as w:
            pcm = w.readframes(w.getnframes())
            return {"rate": w.getframerate(), "channels": w.getnchannels(), "bits": 8 * w.getsampwidth(),
                    "frames": w.getnframes(), "seconds": w.getnframes() / float(w.getframerate()),
                    "pcm_sha256": hashlib.sha256(pcm).hexdigest()}
    except (wave.Error, EOFError, ValueError):
        return None


def soundfile_load(b):
    """What CosyVoice's load_wav gets from torchaudio.load(f, backend='soundfile') for uploaded bytes: libsndfile
    tells the container by its content (WAV or FLAC here; not M4A or WebM). Returns {format, rate, channels,
    frames, pcm (s16le mono bytes)} and for FLAC the sample count its STREAMINFO gives; raises ValueError where
    libsndfile fails ("Format not recognised": garbage, a truncated file, a header that contradicts the frames)."""
    import io
    import subprocess
    import wave

    def ffmpeg_s16(fmt):
        out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", fmt, "-i", "pipe:0", "-f", "s16le", "-ac", "1",
                              "pipe:1"], input=b, capture_output=True)
        if out.returncode != 0 or not out.stdout:
            raise ValueError("Error opening <file>: Format not recognised.")
        return out.stdout

    if b[:4] == b"RIFF" and b[8:12] == b"WAVE":
        info = wav_info(b)
        if info is not None and info["bits"] == 16 and info["channels"] == 1:
            with wave.open(io.BytesIO(b)) as w:
                pcm = w.readframes(w.getnframes())
            return {"format": "wav", "rate": info["rate"], "channels": 1, "frames": info["frames"], "pcm": pcm}
        probe = subprocess.run(["ffprobe", "-v", "error", "-f", "wav", "-show_entries", "stream=sample_rate", "-of",
                                "csv=p=0", "pipe:0"], input=b, capture_output=True)
        if probe.returncode != 0 or not probe.stdout.strip().isdigit():
            raise ValueError("Error opening <file>: Format not recognised.")
        pcm = ffmpeg_s16("wav")   # float, 24-bit, stereo...: libsndfile reads them all; mono as load_wav's mean
        return {"format": "wav", "rate": int(probe.stdout.strip()), "channels": 1, "frames": len(pcm) // 2,
                "pcm": pcm}
    if b[:4] == b"fLaC" and len(b) >= 42 and (b[4] & 0x7F) == 0:
        si = b[8:42]
        rate = (si[10] << 12) | (si[11] << 4) | (si[12] >> 4)
        total = ((si[13] & 0x0F) << 32) | int.from_bytes(si[14:18], "big")
        pcm = ffmpeg_s16("flac")   # any channels and depth, as libsndfile; mono as load_wav's mean
        frames = len(pcm) // 2
        if total not in (0, frames):   # 0: unknown (a FLAC written without seeking back)
            raise ValueError(f"STREAMINFO says {total} samples, the frames hold {frames}")
        return {"format": "flac", "rate": rate, "channels": 1, "frames": frames, "pcm": pcm,
                "streaminfo_samples": total}
    raise ValueError("Error opening <file>: Format not recognised.")


def map_engine_path(opts, path):
    """A path as the engine sees it -> the fake's own file: under option ref_dir_engine (default ref_dir) it maps
    to ref_dir; None when the path is not in the shared folder."""
    local = opts.get("ref_dir")
    if not local or not isinstance(path, str):
        return None
    seen = (opts.get("ref_dir_engine") or local).rstrip("/")
    if not path.startswith(seen + "/"):
        return None
    rest = path[len(seen) + 1:]
    if not rest or "/" in rest or rest.startswith("."):
        return None
    return os.path.join(local, rest)


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------

class Proto:
    """Base protocol: subclasses implement route() and the error shapes."""
    default_rate = 24000
    synth_paths = ()

    def __init__(self, eng):
        self.eng = eng
        self.opts = eng.options

    @property
    def rate(self):
        return self.eng.sample_rate or self.default_rate

    def is_synth(self, method, path):
        return any(re.fullmatch(p, path) for p in self.synth_paths)

    def audio(self, text, voice, fmt, rate=None, speed=1.0, bitrate=None):
        return ag.synth(text, voice, fmt, rate or self.rate, self.eng.ms_per_char, speed, bitrate)

    def chunks(self, data):
        return ag.split(data, self.eng.chunk_bytes)

    # error shapes (override)
    def err_500(self, status, params):
        return uvicorn_500()

    def err_429(self, params):
        return jresp(429, {"detail": "Too Many Requests"})

    def err_4xx(self, params):
        return jresp(params.get("status", 400), {"detail": "Bad Request"})

    def not_found(self, req):
        return jresp(404, {"detail": "Not Found"})

    def route(self, req):
        raise NotImplementedError


# ---- 1. OpenAI -------------------------------------------------------------------------------

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "tts-1-1106", "tts-1-hd-1106", "gpt-4o-mini-tts-2025-03-20")
OPENAI_CT = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
             "pcm": "audio/pcm"}


def openai_error(status, message, type_="invalid_request_error", param=None, code=None, headers=None):
    return jresp(status, {"error": {"message": message, "type": type_, "param": param, "code": code}},
                 headers=headers)


class OpenAI(Proto):
    default_rate = 24000
    synth_paths = (r"/v1/audio/speech",)

    def _hdrs(self):
        return [("x-request-id", "req_" + uuid.uuid4().hex), ("openai-processing-ms", "42"),
                ("openai-version", "2020-10-01"),
                ("x-ratelimit-limit-requests", "500"), ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-requests", "120ms"), ("x-ratelimit-limit-tokens", "2000000"),
                ("x-ratelimit-remaining-tokens", "1999990"), ("x-ratelimit-reset-tokens", "0s")]

    def err_500(self, status, params):
        return openai_error(status, "The server had an error while processing your request. Sorry about that!",
                            "server_error", headers=self._hdrs())

    def err_429(self, params):
        ra = str(params.get("retry_after", 1))
        h = [("retry-after", ra), ("x-ratelimit-limit-requests", "500"), ("x-ratelimit-remaining-requests", "0"),
             ("x-ratelimit-reset-requests", f"{ra}s")]
        if params.get("quota"):
            return openai_error(429, "You exceeded your current quota, please check your plan and billing details.",
                                "insufficient_quota", code="insufficient_quota", headers=h)
        return openai_error(429, "Rate limit reached for tts-1 in organization org-fake on requests per min (RPM): "
                                 "Limit 500, Used 500, Requested 1.", "requests", code="rate_limit_exceeded", headers=h)

    def err_4xx(self, params):
        return openai_error(params.get("status", 400), "Invalid value for 'voice'.", param="voice",
                            code="invalid_value")

    def not_found(self, req):
        return openai_error(404, f"Invalid URL ({req.method} {req.path})")

    def auth(self, req):
        key = self.eng.api_key
        if not key:
            return None
        h = req.header("Authorization") or ""
        if not h.startswith("Bearer ") or not h[7:].strip():
            return openai_error(401, "You didn't provide an API key. You need to provide your API key in an "
                                     "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        if h[7:].strip() != key:
            return openai_error(401, "Incorrect API key provided: " + h[7:12] + "****. You can find your API key at "
                                     "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        return None

    def route(self, req):
        if req.path == "/v1/models" and req.method == "GET":
            return self.auth(req) or jresp(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1699046015, "owned_by": "system"} for m in OPENAI_MODELS]})
        if req.path != "/v1/audio/speech":
            return self.not_found(req)
        if req.method != "POST":
            return openai_error(405, f"Invalid method for URL ({req.method} {req.path})")
        bad = self.auth(req)
        if bad:
            return bad
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request. (HINT: This likely means "
                                     "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                                     "payload, but what was sent was not valid JSON.)")
        for f in ("model", "input", "voice"):
            if f not in body:
                return openai_error(400, f"Missing required parameter: '{f}'.", param=f, code="missing_required_parameter")
        model, text, voice = body["model"], body["input"], body["voice"]
        if not isinstance(text, str):
            return openai_error(400, "Invalid type for 'input': expected a string.", param="input",
                                code="invalid_type")
        if len(text) > 4096:
            return openai_error(400, "Invalid 'input': string too long. Expected a string with maximum length 4096, "
                                     f"but got a string with length {len(text)} instead.", param="input",
                                code="string_above_max_length")
        if not text:
            return openai_error(400, "Invalid 'input': empty string.", param="input", code="empty_string")
        if model not in OPENAI_MODELS and not re.fullmatch(r"(tts-1(-hd)?|gpt-4o-mini-tts)(-[0-9-]+)?", str(model)):
            return openai_error(404, f"The model `{model}` does not exist or you do not have access to it.",
                                code="model_not_found")
        if isinstance(voice, dict):
            vid = voice.get("id")
            if not isinstance(vid, str) or not vid.startswith("voice_"):
                return openai_error(400, "Invalid value for 'voice': custom voice id not found.", param="voice",
                                    code="invalid_value")
            voice = vid
        elif voice not in OPENAI_VOICES:
            return openai_error(400, f"Invalid value: '{voice}'. Supported values are: " +
                                ", ".join(f"'{v}'" for v in OPENAI_VOICES) + ".", param="voice", code="invalid_value")
        fmt = body.get("response_format", "mp3")
        if fmt not in OPENAI_CT:
            return openai_error(400, f"Invalid value: '{fmt}'. Supported values are: 'mp3', 'opus', 'aac', 'flac', "
                                     "'wav', and 'pcm'.", param="response_format", code="invalid_value")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or isinstance(speed, bool):
            return openai_error(400, "Invalid type for 'speed': expected a decimal.", param="speed", code="invalid_type")
        if speed < 0.25:
            return openai_error(400, f"Invalid 'speed': decimal below minimum value. Expected a value >= 0.25, but got "
                                     f"{speed} instead.", param="speed", code="decimal_below_min_value")
        if speed > 4.0:
            return openai_error(400, f"Invalid 'speed': decimal above maximum value. Expected a value <= 4, but got "
                                     f"{speed} instead.", param="speed", code="decimal_above_max_value")
        sf = body.get("stream_format", "audio")
        if sf not in ("audio", "sse"):
            return openai_error(400, f"Invalid value: '{sf}'. Supported values are: 'audio' and 'sse'.",
                                param="stream_format", code="invalid_value")
        if sf == "sse" and model.startswith("tts-1"):
            return openai_error(400, f"stream_format 'sse' is not supported for model {model}.",
                                param="stream_format", code="unsupported_value")
        if fmt == "wav":
            # streamed WAV: OpenAI writes 0xFFFFFFFF sizes
            data = ag.wav_header(self.rate, 0xFFFFFFFF) + self.audio(text, voice, "pcm", speed=speed)
        else:
            data = self.audio(text, voice, fmt, speed=speed)
        if sf == "sse":
            events = []
            for piece in self.chunks(data):
                ev = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode("ascii")}
                events.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
            it = max(1, math.ceil(len(text) / 4))
            ot = max(1, int(ag.duration_seconds(text, self.eng.ms_per_char, speed) * 50))
            done = {"type": "speech.audio.done", "usage": {"input_tokens": it, "output_tokens": ot,
                                                            "total_tokens": it + ot}}
            events.append(b"data: " + json.dumps(done).encode() + b"\n\n")
            return Resp(200, ctype="text/event-stream", headers=self._hdrs(), chunks=events, ok=True)
        return Resp(200, ctype=OPENAI_CT[fmt], headers=self._hdrs(), chunks=self.chunks(data), ok=True)


# ---- openai_fm (openai.fm form protocol as used by ttsfm) -------------------------------------

class OpenAIFM(Proto):
    default_rate = 24000
    synth_paths = (r"/api/generate",)
    VOICES = OPENAI_VOICES

    def _err(self, status, message, type_="invalid_request_error", code=None, headers=None):
        return jresp(status, {"error": {"message": message, "type": type_, "code": code}}, headers=headers)

    def err_500(self, status, params):
        if params.get("shape") == "html":
            return html_500()
        return self._err(status, "Internal server error while generating speech", "server_error", "internal_error")

    def err_429(self, params):
        return self._err(429, "Rate limit exceeded. Please try again later.", "rate_limit_error",
                         "rate_limit_exceeded", headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        return self._err(params.get("status", 400), "Invalid voice", code="invalid_voice")

    def not_found(self, req):
        return self._err(404, "Endpoint not found", "not_found_error", "not_found")

    def route(self, req):
        if req.path != "/api/generate":
            return self.not_found(req)
        if req.method != "POST":
            return self._err(405, "Method not allowed", code="method_not_allowed")
        key = self.eng.api_key
        if key:
            h = req.header("Authorization") or ""
            given = h[7:].strip() if h.startswith("Bearer ") else (req.header("X-API-Key") or "")
            if given != key:
                return self._err(401, "Invalid API key", "authentication_error", "invalid_api_key")
        form = req.form()
        text, voice = form.get("input"), form.get("voice")
        if not text:
            return self._err(400, "input is required", code="missing_input")
        if not voice:
            return self._err(400, "voice is required", code="missing_voice")
        if len(text) > 4096:
            return self._err(400, f"input is too long ({len(text)} > 4096 characters)", code="input_too_long")
        if voice.lower() not in self.VOICES:
            return self._err(400, f"Invalid voice: {voice}", code="invalid_voice")
        fmt = form.get("response_format") or "mp3"
        if fmt not in ("mp3", "wav"):
            return self._err(400, f"Unsupported response_format: {fmt} (mp3 or wav)", code="invalid_format")
        speed = to_float(form.get("speed"), 1.0)
        data = self.audio(text, voice.lower(), fmt, speed=speed)
        hdrs = []
        if form.get("generation"):
            hdrs.append(("X-Generation", form["generation"]))
        return Resp(200, data, "audio/mpeg" if fmt == "mp3" else "audio/wav", hdrs, ok=True)


# ---- 2. GPT-SoVITS api_v2.py ------------------------------------------------------------------

SOVITS_V2_LANGS = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SOVITS_V2_DEFAULTS = {"prompt_text": "", "aux_ref_audio_paths": [], "top_k": 15, "top_p": 1, "temperature": 1,
                      "text_split_method": "cut5", "batch_size": 1, "batch_threshold": 0.75, "split_bucket": True,
                      "speed_factor": 1.0, "fragment_interval": 0.3, "seed": -1, "media_type": "wav",
                      "streaming_mode": False, "parallel_infer": True, "repetition_penalty": 1.35,
                      "sample_steps": 32, "super_sampling": False, "overlap_length": 2, "min_chunk_length": 16}


class GptSovitsV2(Proto):
    default_rate = 32000
    synth_paths = (r"/tts",)

    def err_500(self, status, params):
        if params.get("shape") == "json":
            return jresp(status, {"message": "tts failed", "Exception": "fake fault"})
        return uvicorn_500()

    def err_429(self, params):
        return jresp(429, {"message": "too many requests"}, headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        return jresp(params.get("status", 400), {"message": "tts failed", "Exception": "fake fault: bad request"})

    def route(self, req):
        if req.path == "/tts":
            if req.method == "GET":
                q = dict(req.query)
                # api_v2's GET handler calls text_lang.lower() / prompt_lang.lower() before checking: crash.
                if q.get("text_lang") is None or q.get("prompt_lang") is None:
                    return uvicorn_500()
                return self.tts(q, from_query=True)
            if req.method == "POST":
                try:
                    body = req.json()
                    if not isinstance(body, dict):
                        raise ValueError
                except ValueError:
                    return jresp(422, {"detail": [{"type": "json_invalid", "loc": ["body", 0],
                                                   "msg": "JSON decode error", "input": {}}]})
                return self.tts(body, from_query=False)
            return jresp(405, {"detail": "Method Not Allowed"})
        if req.path in ("/set_gpt_weights", "/set_sovits_weights"):
            if not req.query.get("weights_path"):
                which = "gpt" if "gpt" in req.path else "sovits"
                return jresp(400, {"message": f"{which} weight path is required"})
            return jresp(200, {"message": "success"})
        if req.path == "/set_refer_audio":
            if not req.query.get("refer_audio_path"):
                return jresp(400, {"message": "refer_audio_path is required"})
            return jresp(200, {"message": "success"})
        if req.path == "/control":
            return Resp(close=True)     # restart/exit: no reply
        if req.path in ("/docs", "/openapi.json"):
            return Resp(200, b"<html><title>FastAPI - Swagger UI</title></html>", "text/html; charset=utf-8")
        return self.not_found(req)

    def tts(self, p, from_query):
        def g(k):
            v = p.get(k)
            return SOVITS_V2_DEFAULTS.get(k) if v is None else v
        text, text_lang, ref, prompt_lang = p.get("text"), p.get("text_lang"), p.get("ref_audio_path"), p.get("prompt_lang")
        media_type = g("media_type")
        sm = g("streaming_mode")
        if isinstance(sm, str):
            sm = {"true": 1, "false": 0}.get(sm.lower(), sm)
            try:
                sm = int(sm)
            except ValueError:
                return jresp(400, {"message": f"streaming_mode: {sm} is not supported"})
        if isinstance(sm, bool):
            sm = 1 if sm else 0
        if sm not in (0, 1, 2, 3):
            return jresp(400, {"message": f"streaming_mode: {sm} is not supported"})
        split_m = g("text_split_method")
        if ref in (None, ""):
            return jresp(400, {"message": "ref_audio_path is required"})
        if text in (None, ""):
            return jresp(400, {"message": "text is required"})
        if text_lang in (None, ""):
            return jresp(400, {"message": "text_lang is required"})
        if str(text_lang).lower() not in SOVITS_V2_LANGS:
            return jresp(400, {"message": f"text_lang: {text_lang} is not supported in version v2"})
        if prompt_lang in (None, ""):
            return jresp(400, {"message": "prompt_lang is required"})
        if str(prompt_lang).lower() not in SOVITS_V2_LANGS:
            return jresp(400, {"message": f"prompt_lang: {prompt_lang} is not supported in version v2"})
        if media_type not in ("wav", "raw", "ogg", "aac"):
            return jresp(400, {"message": f"media_type: {media_type} is not supported"})
        if media_type == "ogg" and not sm:
            return jresp(400, {"message": "ogg format is not supported in non-streaming mode"})
        if split_m not in ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5"):
            return jresp(400, {"message": f"text_split_method:{split_m} is not supported"})
        try:
            speed = float(g("speed_factor"))
        except (TypeError, ValueError):
            return jresp(400, {"message": "tts failed", "Exception": "could not convert speed_factor to float"})
        voice = ref
        local = map_engine_path(self.opts, ref)
        if local is not None:        # a library reference in the shared folder: the engine reads it
            try:
                with open(local, "rb") as fh:
                    data = fh.read()
            except OSError:
                return jresp(400, {"message": "tts failed",
                                   "Exception": f"[Errno 2] No such file or directory: '{ref}'"})
            self.eng.record_ref("file", data, p.get("prompt_text"), path=ref, lang=prompt_lang)
        elif self.opts.get("ref_dir") and self.opts.get("strict_refs"):
            return jresp(400, {"message": "tts failed", "Exception": f"[Errno 2] No such file or directory: '{ref}'"})
        ct = f"audio/{media_type}"
        pcm = self.audio(text, voice, "pcm", speed=speed)
        if not sm:
            if media_type == "wav":
                data = ag.wav(pcm, self.rate)
            elif media_type == "raw":
                data = pcm
            else:
                data = ag.encode(pcm, self.rate, "aac")
            return Resp(200, data, ct, ok=True)
        frags = ag.split(pcm, self.eng.chunk_bytes)
        if media_type == "wav":
            chunks = [ag.wav_header(self.rate, 0)] + frags
        elif media_type == "raw":
            chunks = frags
        else:   # each chunk an independently encoded ogg / aac file
            chunks = [ag.encode(f, self.rate, "ogg" if media_type == "ogg" else "aac") for f in frags]
        return Resp(200, ctype=ct, chunks=chunks, ok=True)


# ---- 2b. GPT-SoVITS api.py (v1) ---------------------------------------------------------------

SOVITS_V1_LANGS = ("中文", "英文", "日文", "韩文", "粤语", "中英混合", "日英混合", "粤英混合", "韩英混合", "多语种混合",
                   "多语种混合(粤语)", "zh", "en", "ja", "ko", "yue", "all_zh", "all_ja", "all_ko", "all_yue", "auto",
                   "auto_yue", "ZH", "EN", "JA", "KO", "YUE")


class GptSovitsV1(GptSovitsV2):
    default_rate = 32000
    synth_paths = (r"/",)

    def err_500(self, status, params):
        if params.get("shape") == "json":
            return jresp(status, {"code": 500, "message": "tts failed"})
        return uvicorn_500()

    def err_429(self, params):
        return jresp(429, {"code": 429, "message": "too many requests"},
                     headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        return jresp(params.get("status", 400), {"code": 400, "message": "未指定文本语种"})

    def route(self, req):
        if req.path == "/":
            if req.method == "GET":
                q = req.query
                if q.get("text") is None or q.get("text_language") is None:
                    return uvicorn_500()     # GET without the required fields crashes (plain-text 500)
                return self.handle(q)
            if req.method == "POST":
                try:
                    body = req.json()
                    if not isinstance(body, dict):
                        raise ValueError
                except ValueError:
                    return jresp(400, {"code": 400, "message": "invalid json"})
                return self.handle(body)
            return jresp(405, {"detail": "Method Not Allowed"})
        if req.path == "/change_refer":
            p = req.query if req.method == "GET" else self._body(req)
            if not (p.get("refer_wav_path") and p.get("prompt_text") and p.get("prompt_language")):
                return jresp(400, {"code": 400, "message": "缺少参数"})
            self.opts["v1_default_ref"] = p.get("refer_wav_path")
            return jresp(200, {"code": 0, "message": "Success"})
        if req.path == "/set_model":
            p = req.query if req.method == "GET" else self._body(req)
            if not (p.get("gpt_model_path") or p.get("sovits_model_path")):
                return jresp(400, {"code": 400, "message": "缺少参数"})
            return jresp(200, {"code": 0, "message": "Success"})
        if req.path == "/control":
            return Resp(close=True)
        return self.not_found(req)

    @staticmethod
    def _body(req):
        try:
            b = req.json()
            return b if isinstance(b, dict) else {}
        except ValueError:
            return {}

    def handle(self, p):
        text, lang = p.get("text"), p.get("text_language")
        refs = [p.get("refer_wav_path"), p.get("prompt_text"), p.get("prompt_language")]
        default_ref = self.opts.get("v1_default_ref", "default.wav")
        if all(refs):
            voice = refs[0]
        elif default_ref:
            voice = default_ref
        else:
            return jresp(400, {"code": 400, "message": "未指定参考音频且接口无预设"})
        if not text:
            return jresp(400, {"code": 400, "message": "text is required"})
        if not lang:
            return jresp(400, {"code": 400, "message": "未指定文本语种"})
        if lang not in SOVITS_V1_LANGS:
            return jresp(400, {"code": 400, "message": f"不支持的语种: {lang}"})
        if refs[2] and refs[2] not in SOVITS_V1_LANGS:
            return jresp(400, {"code": 400, "message": f"不支持的语种: {refs[2]}"})
        try:
            speed = float(p.get("speed", 1.0))
            steps = int(p.get("sample_steps", 32))
        except (TypeError, ValueError):
            return jresp(400, {"code": 400, "message": "invalid parameter"})
        if steps not in (4, 8, 16, 32):
            return jresp(400, {"code": 400, "message": "sample_steps must be 4, 8, 16 or 32"})
        pcm = self.audio(text, voice, "pcm", speed=speed)
        mode = self.opts.get("stream_mode", "close")
        mt = self.opts.get("media_type", "wav")
        if mode == "close":      # one WAV (or ogg/aac file) at the end, still as a StreamingResponse
            if mt == "wav":
                data = ag.wav(pcm, self.rate)
            else:
                data = ag.encode(pcm, self.rate, "ogg" if mt == "ogg" else "aac")
            return Resp(200, ctype=f"audio/{mt}", chunks=self.chunks(data), ok=True)
        frags = ag.split(pcm, self.eng.chunk_bytes)
        if mt == "wav":
            chunks = [ag.wav_header(self.rate, 0)] + frags
        else:
            chunks = [ag.encode(f, self.rate, "ogg" if mt == "ogg" else "aac") for f in frags]
        return Resp(200, ctype=f"audio/{mt}", chunks=chunks, ok=True)


# ---- 3. xtts-api-server -----------------------------------------------------------------------

XTTS_LANGS = {"Arabic": "ar", "Brazilian Portuguese": "pt", "Chinese": "zh-cn", "Czech": "cs", "Dutch": "nl",
              "English": "en", "French": "fr", "German": "de", "Italian": "it", "Polish": "pl", "Russian": "ru",
              "Spanish": "es", "Turkish": "tr", "Japanese": "ja", "Korean": "ko", "Hungarian": "hu", "Hindi": "hi"}
XTTS_BAD_LANG = "Language code sent is either unsupported or misspelled."


class Xtts(Proto):
    default_rate = 24000
    synth_paths = (r"/tts_to_audio/?", r"/tts_stream", r"/tts_to_file")

    def speakers(self):
        return list(self.opts.get("speakers", ["female", "male", "calm_female"]))

    def err_500(self, status, params):
        return jresp(status, {"detail": "Error: CUDA out of memory (fake fault)"})

    def err_4xx(self, params):
        return jresp(params.get("status", 400), {"detail": XTTS_BAD_LANG})

    def err_429(self, params):
        return jresp(429, {"detail": "Too Many Requests"}, headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def speaker_ok(self, s):
        if not isinstance(s, str) or not s:
            return False
        base = s[:-4] if s.endswith(".wav") else s
        return base in self.speakers() or s in self.opts.get("speaker_files", []) or self.ref_file(s) is not None

    def ref_file(self, s):
        """The fake's own path of a .wav speaker_wav in the shared folder: absolute under ref_dir_engine, or a
        plain file name joined to the speaker folder (option ref_dir), as xtts-api-server does."""
        if not isinstance(s, str) or not s.endswith(".wav") or not self.opts.get("ref_dir"):
            return None
        if os.path.isabs(s):
            return map_engine_path(self.opts, s)
        if "/" in s or s.startswith("."):
            return None
        return os.path.join(self.opts["ref_dir"], s)

    def read_ref(self, s):
        """(bytes, None) for a reference in the shared folder, (None, error response) when it is missing, or
        (None, None) when s is not such a reference."""
        path = self.ref_file(s)
        if path is None:
            return None, None
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None, jresp(500, {"detail": f"Error: Speaker {s} not found in speakers folder"})
        self.eng.record_ref("file", data, None, path=s)
        return data, None

    def route(self, req):
        p = req.path
        if p in ("/tts_to_audio/", "/tts_to_audio", "/tts_to_file"):
            if req.method != "POST":
                return jresp(405, {"detail": "Method Not Allowed"})
            try:
                body = req.json()
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                return jresp(422, {"detail": [{"loc": ["body", 0], "msg": "Expecting value", "type": "value_error.jsondecode"}]})
            need = ["text", "speaker_wav", "language"] + (["file_name_or_path"] if p == "/tts_to_file" else [])
            missing = [k for k in need if k not in body]
            if missing:
                return fastapi_422(missing, "body", pydantic=1)
            if str(body["language"]).lower() not in XTTS_LANGS.values():
                return jresp(400, {"detail": XTTS_BAD_LANG})
            if not self.speaker_ok(body["speaker_wav"]):
                return jresp(500, {"detail": f"Error: Speaker {body['speaker_wav']} not found in speakers folder"})
            _, missing = self.read_ref(body["speaker_wav"])
            if missing is not None:
                return missing
            if p == "/tts_to_file":
                return jresp(200, {"message": "The audio was successfully made and stored.",
                                   "output_path": body["file_name_or_path"]})
            data = self.audio(body["text"], body["speaker_wav"], "wav_f32")
            return Resp(200, data, "audio/wav", [("content-disposition", 'attachment; filename="output.wav"')], ok=True)
        if p == "/tts_stream":
            if req.method != "GET":
                return jresp(405, {"detail": "Method Not Allowed"})
            missing = [k for k in ("text", "speaker_wav", "language") if k not in req.query]
            if missing:
                return fastapi_422(missing, "query", pydantic=1)
            q = req.query
            if q["language"].lower() not in XTTS_LANGS.values():
                return jresp(400, {"detail": XTTS_BAD_LANG})
            if not self.speaker_ok(q["speaker_wav"]):
                return jresp(500, {"detail": f"Error: Speaker {q['speaker_wav']} not found in speakers folder"})
            _, missing = self.read_ref(q["speaker_wav"])
            if missing is not None:
                return missing
            pcm = self.audio(q["text"], q["speaker_wav"], "pcm")
            chunks = [ag.wav_header(self.rate, 0)] + self.chunks(pcm)
            return Resp(200, ctype="audio/x-wav", chunks=chunks, ok=True)
        if req.method == "GET":
            if p == "/speakers_list":
                return jresp(200, self.speakers())
            if p == "/speakers":
                return jresp(200, [{"name": s, "voice_id": s, "preview_url": f"/sample/{s}.wav"} for s in self.speakers()])
            if p == "/languages":
                return jresp(200, {"languages": XTTS_LANGS})
            if p == "/get_models_list":
                return jresp(200, ["v2.0.2", "v2.0.3", "main"])
            if p == "/get_folders":
                return jresp(200, {"speaker_folder": "speakers", "output_folder": "output", "model_folder": "xtts_models"})
            if p == "/get_tts_settings":
                return jresp(200, {"stream_chunk_size": 100, "temperature": 0.75, "speed": 1.0, "length_penalty": 1.0,
                                   "repetition_penalty": 5.0, "top_p": 0.85, "top_k": 50, "enable_text_splitting": True})
            m = re.fullmatch(r"/sample/(.+)", p)
            if m:
                name = m.group(1)
                if not self.speaker_ok(name):
                    return jresp(404, {"detail": "File not found"})
                return Resp(200, self.audio("sample voice", name, "wav"), "audio/wav")
        if req.method == "POST" and p in ("/set_speaker_folder", "/set_output", "/switch_model", "/set_tts_settings"):
            try:
                body = req.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not body:
                return fastapi_422(["body"], "body", pydantic=1)
            return jresp(200, {"message": "Settings successfully applied" if p == "/set_tts_settings"
                               else "Success"})
        return self.not_found(req)


# ---- 4. OpenVoice_server ----------------------------------------------------------------------

OPENVOICE_ACCENTS = ("en-au", "en-br", "en-default", "en-india", "en-newest", "en-us", "es", "fr", "jp", "kr", "zh")


class OpenVoice(Proto):
    default_rate = 22050
    synth_paths = (r"/synthesize_speech/?", r"/base_tts/?", r"/change_voice/?")

    def __init__(self, eng):
        super().__init__(eng)
        self.labels = list(self.opts.get("voices", ["demo_speaker0", "demo_speaker1", "demo_speaker2"]))
        self.uploads = {}       # label -> audio bytes (forgotten by POST /__fake/forget, as a restart would)

    def forget(self):
        for lbl in list(self.uploads):
            if lbl in self.labels:
                self.labels.remove(lbl)
        self.uploads.clear()

    def err_500(self, status, params):
        return jresp(status, {"detail": "CUDA error: out of memory (fake fault)"})

    def err_4xx(self, params):
        return jresp(params.get("status", 400), {"detail": "No matching voice found."})

    def err_429(self, params):
        return jresp(429, {"detail": "Too Many Requests"}, headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def route(self, req):
        p = req.path.rstrip("/") + "/"
        t0 = time.time()
        if p in ("/synthesize_speech/", "/base_tts/"):
            if req.method != "GET":
                return jresp(405, {"detail": "Method Not Allowed"})
            q = req.query
            need = ["text", "voice"] if p == "/synthesize_speech/" else ["text"]
            missing = [k for k in need if k not in q]
            if missing:
                return fastapi_422(missing, "query")
            accent = q.get("accent", "en-newest")
            if accent not in OPENVOICE_ACCENTS:
                return jresp(400, {"detail": f"Invalid accent {accent}"})
            try:
                speed = float(q.get("speed", 1.0))
            except ValueError:
                return jresp(422, {"detail": [{"type": "float_parsing", "loc": ["query", "speed"],
                                               "msg": "Input should be a valid number, unable to parse string as a number",
                                               "input": q.get("speed")}]})
            if p == "/synthesize_speech/":
                voice = q["voice"]
                if not any(lbl.startswith(voice) for lbl in self.labels):
                    return jresp(400, {"detail": "No matching voice found."})
                if voice in self.uploads:
                    self.eng.record_use(voice)
            else:
                voice = "base:" + accent
            data = self.audio(q["text"], voice, "wav", speed=speed)
            return Resp(200, ctype="audio/wav", chunks=self.chunks(data), ok=True,
                        headers=[("x-elapsed-time", f"{time.time() - t0 + 0.001:.3f}")])
        if p == "/upload_audio/":
            if req.method != "POST":
                return jresp(405, {"detail": "Method Not Allowed"})
            form = req.form()
            missing = [k for k in ("audio_file_label", "file") if k not in form]
            if missing:
                return fastapi_422(missing, "body")
            f = form["file"]
            if not isinstance(f, Upload):
                return jresp(422, {"detail": [{"type": "value_error", "loc": ["body", "file"],
                                               "msg": "Value error, Expected UploadFile, received: <class 'str'>",
                                               "input": f}]})
            ext = os.path.splitext(f.filename)[1].lower().lstrip(".")
            if ext not in ("wav", "mp3", "flac", "ogg"):
                return jresp(200, {"error": "File type not allowed"})
            if len(f.data) > 5 * 1024 * 1024:
                return jresp(200, {"error": "File size is over 5MB"})
            label = form["audio_file_label"]
            if label not in self.labels:
                self.labels.append(label)
            self.uploads[label] = f.data
            self.eng.record_ref("upload", f.data, None, label=label, filename=f.filename)
            return jresp(200, {"message": f"File {f.filename} uploaded successfully with label {label}."})
        if p == "/change_voice/":
            if req.method != "POST":
                return jresp(405, {"detail": "Method Not Allowed"})
            form = req.form()
            missing = [k for k in ("reference_speaker", "file") if k not in form]
            if missing:
                return fastapi_422(missing, "body")
            ref = form["reference_speaker"]
            if not any(lbl.startswith(ref) for lbl in self.labels):
                return jresp(400, {"detail": "No matching reference speaker found."})
            f = form["file"]
            n = max(1, len(f.data if isinstance(f, Upload) else f) // 2000)
            data = self.audio("x" * n, ref, "wav")
            return Resp(200, ctype="audio/wav", chunks=self.chunks(data), ok=True,
                        headers=[("x-elapsed-time", f"{time.time() - t0 + 0.001:.3f}")])
        return self.not_found(req)


# ---- 5a. CosyVoice ----------------------------------------------------------------------------

COSY_SPEAKERS = ("中文女", "中文男", "日语男", "粤语女", "英文女", "英文男", "韩语女")
COSY_ROUTES = {
    "/inference_sft": (("tts_text", "str"), ("spk_id", "str")),
    "/inference_zero_shot": (("tts_text", "str"), ("prompt_text", "str"), ("prompt_wav", "file")),
    "/inference_cross_lingual": (("tts_text", "str"), ("prompt_wav", "file")),
    "/inference_instruct": (("tts_text", "str"), ("spk_id", "str"), ("instruct_text", "str")),
    "/inference_instruct2": (("tts_text", "str"), ("instruct_text", "str"), ("prompt_wav", "file")),
}


class CosyVoice(Proto):
    default_rate = 22050
    synth_paths = tuple(COSY_ROUTES)

    def err_500(self, status, params):
        return uvicorn_500()

    def err_4xx(self, params):
        return fastapi_422(["tts_text"], "body")

    def err_429(self, params):
        return jresp(429, {"detail": "Too Many Requests"}, headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def route(self, req):
        spec = COSY_ROUTES.get(req.path)
        if spec is None:
            return self.not_found(req)
        if req.method not in ("GET", "POST"):
            return jresp(405, {"detail": "Method Not Allowed"})
        form = req.form()    # Form() fields come from the body, also on GET; the query string is ignored
        missing = [n for n, _ in spec if n not in form]
        if missing:
            return fastapi_422(missing, "body")
        for n, typ in spec:
            if typ == "file" and not isinstance(form[n], Upload):
                return jresp(422, {"detail": [{"type": "value_error", "loc": ["body", n],
                                               "msg": "Value error, Expected UploadFile, received: <class 'str'>",
                                               "input": form[n]}]})
            if typ == "str" and isinstance(form[n], Upload):
                return jresp(422, {"detail": [{"type": "string_type", "loc": ["body", n],
                                               "msg": "Input should be a valid string", "input": None}]})
        text = form["tts_text"]
        if "spk_id" in form:
            voice = form["spk_id"]
            if voice not in self.opts.get("speakers", COSY_SPEAKERS):
                # the KeyError is raised inside the generator: 200 headers, then the stream just ends
                return Resp(200, chunks=[], abort=True)
        else:
            # load_wav(prompt_wav.file, 16000): torchaudio (libsndfile) decodes it, a rate under 16 kHz fails
            # its assert, and any exception before the stream starts is uvicorn's plain 500
            data = form["prompt_wav"].data
            try:
                got = soundfile_load(data)
            except ValueError:
                return uvicorn_500()
            if got["rate"] < 16000:
                return uvicorn_500()
            voice = "ref:" + str(len(data)) + ":" + form.get("prompt_text", "")
            self.eng.record_ref("inline", data, form.get("prompt_text"), route=req.path, format=got["format"],
                                rate=got["rate"], frames=got["frames"], pcm=got["pcm"],
                                streaminfo_samples=got.get("streaminfo_samples"),
                                filename=form["prompt_wav"].filename)
        if "instruct_text" in form:
            voice += "|" + form["instruct_text"]
        pcm = self.audio(text, voice, "pcm")
        return Resp(200, chunks=self.chunks(pcm), ok=True)     # no Content-Type at all


# ---- 5b. fish-speech --------------------------------------------------------------------------

FISH_CT = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}


def fish_error(status, message):
    return jresp(status, {"statusCode": status, "message": message, "error": REASONS.get(status, "Error")})


class Fish(Proto):
    default_rate = 44100
    synth_paths = (r"/v1/tts",)

    def err_500(self, status, params):
        return fish_error(status, "Internal Server Error")

    def err_429(self, params):
        r = fish_error(429, "Too Many Requests")
        r.headers.append(("Retry-After", str(params.get("retry_after", 1))))
        return r

    def err_4xx(self, params):
        return fish_error(params.get("status", 400), "Invalid request: chunk_length out of range")

    def not_found(self, req):
        return fish_error(404, "Not Found")

    def route(self, req):
        if req.path == "/v1/health":
            if req.method not in ("GET", "POST"):
                return fish_error(405, "Method Not Allowed")
            return jresp(200, {"status": "ok"})
        if req.path == "/v1/references/list" and req.method == "GET":
            return jresp(200, {"success": True, "reference_ids": list(self.opts.get("references", ["speaker1"])),
                               "message": "Success"})
        if req.path != "/v1/tts":
            return self.not_found(req)
        if req.method != "POST":
            return fish_error(405, "Method Not Allowed")
        key = self.eng.api_key
        if key:
            h = req.header("Authorization") or ""
            if not h.startswith("Bearer ") or h[7:].strip() != key:
                return fish_error(401, "Invalid token")
        ct = req.ctype
        try:
            if ct.startswith("application/msgpack"):
                if self.opts.get("msgpack", True) is False:
                    return fish_error(415, "Unsupported content type: application/msgpack")
                body = msgpack_unpack(req.body)
            elif ct.startswith("application/json") or not ct:
                body = req.json()
            else:
                return fish_error(415, f"Unsupported content type: {ct}")
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except (ValueError, IndexError, struct.error) as e:
            return fish_error(400, f"Invalid request body: {e}")
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return fish_error(400, "text: Field required")
        fmt = body.get("format", "wav")
        if fmt not in ("wav", "pcm", "mp3", "opus"):
            return fish_error(400, f"format: Input should be 'wav', 'pcm', 'mp3' or 'opus'")
        cl = body.get("chunk_length", 200)
        if not isinstance(cl, int) or not 100 <= cl <= 1000:
            return fish_error(400, "chunk_length: Input should be between 100 and 1000")
        streaming = to_bool(body.get("streaming"), False)
        if streaming and fmt != "wav":
            return fish_error(400, "Streaming only supports WAV format")
        ref_id = body.get("reference_id")
        refs = body.get("references") or []
        if ref_id:
            known = self.opts.get("references")
            if known is not None and ref_id not in known:
                return fish_error(400, f"Reference ID {ref_id} not found")
            voice = "ref:" + ref_id
        elif refs:
            r0 = refs[0] if isinstance(refs[0], dict) else {}
            audio = r0.get("audio") or b""
            if isinstance(audio, str):       # JSON clients send base64
                audio = base64.b64decode(audio)
            voice = "refs:" + str(len(audio)) + ":" + str(r0.get("text", ""))
            self.eng.record_ref("inline", audio, r0.get("text"), body=("msgpack" if ct.startswith("application/msgpack")
                                                                        else "json"))
        else:
            voice = "seed:" + str(body.get("seed"))
        hdrs = [("Content-Disposition", f"attachment; filename=audio.{fmt}")]
        ctype = FISH_CT.get(fmt, "application/octet-stream")
        if streaming:
            pcm = self.audio(text, voice, "pcm")
            return Resp(200, ctype=ctype, headers=hdrs, chunks=[ag.wav_header(self.rate, 0)] + self.chunks(pcm), ok=True)
        data = self.audio(text, voice, fmt, bitrate="128k" if fmt == "mp3" else None)
        return Resp(200, data, ctype, hdrs, ok=True)


# ---- 7a. ElevenLabs ---------------------------------------------------------------------------

ELEVEN_VOICES = [("21m00Tcm4TlvDq8ikWAM", "Rachel"), ("EXAVITQu4vr4xnVDxvXQ", "Sarah"),
                 ("pNInz6obpgDQGcFmaJgB", "Adam"), ("JBFqnCBsd6RMkjVDRZzb", "George")]
ELEVEN_MODELS = ("eleven_multilingual_v2", "eleven_turbo_v2_5", "eleven_flash_v2_5", "eleven_monolingual_v1",
                 "eleven_v3")


def eleven_format(name):
    """output_format → (container, rate, bitrate, content type) or None."""
    m = re.fullmatch(r"mp3_(22050|44100)_(32|64|96|128|192)", name)
    if m and (m.group(1) == "44100" or m.group(2) == "32"):
        return "mp3", int(m.group(1)), m.group(2) + "k", "audio/mpeg"
    m = re.fullmatch(r"pcm_(8000|16000|22050|24000|44100|48000)", name)
    if m:
        return "pcm", int(m.group(1)), None, "audio/pcm"
    if name == "ulaw_8000":
        return "mulaw", 8000, None, "audio/basic"
    if name == "alaw_8000":
        return "alaw", 8000, None, "audio/alaw"
    m = re.fullmatch(r"opus_48000_(32|64|96|128|192)", name)
    if m:
        return "opus", 48000, m.group(1) + "k", "audio/opus"
    return None


class ElevenLabs(Proto):
    default_rate = 44100
    synth_paths = (r"/v1/text-to-speech/[^/]+", r"/v1/text-to-speech/[^/]+/stream")

    def __init__(self, eng):
        super().__init__(eng)
        self.added = {}         # voice_id -> (name, audio bytes)

    def voices(self):
        extra = [(v, v) for v in self.opts.get("voices", [])]
        return ELEVEN_VOICES + extra + [(vid, nm) for vid, (nm, _) in list(self.added.items())]

    def add_voice(self, req):
        bad = self.auth(req)
        if bad:
            return bad
        form = req.form()
        name = form.get("name")
        files = form.get("files")
        if not isinstance(name, str) or not name or not isinstance(files, Upload):
            return jresp(422, {"detail": [{"loc": ["body", "name" if not name else "files"], "msg": "field required",
                                           "type": "value_error.missing"}]})
        if wav_info(files.data) is None:
            return self._err(400, "invalid_audio", "The uploaded file is not audio we can read.")
        vid = uuid.uuid4().hex[:20]
        self.added[vid] = (name, files.data)
        self.eng.record_ref("add", files.data, None, name=name, voice_id=vid)
        return jresp(200, {"voice_id": vid, "requires_verification": False})

    def _err(self, status, st, message, headers=None):
        return jresp(status, {"detail": {"status": st, "message": message}}, headers=headers)

    def err_500(self, status, params):
        return self._err(status, "internal_server_error", "An internal server error occurred.")

    def err_429(self, params):
        return self._err(429, "too_many_concurrent_requests",
                         "Too many concurrent requests. Your current subscription is associated with a maximum of "
                         "2 concurrent requests.", headers=[("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        st = params.get("status", 401)
        if st == 404:
            return self._err(404, "voice_not_found", "A voice with the voice_id fake was not found.")
        return self._err(st, "quota_exceeded", "This request exceeds your quota of 10000. You have 0 credits "
                                               "remaining, while 120 credits are required for this request.")

    def auth(self, req):
        key = self.eng.api_key
        if not key:
            return None
        given = req.header("xi-api-key")
        if given is None:
            return self._err(401, "invalid_api_key", "Missing xi-api-key header. Provide your API key.")
        if given != key:
            return self._err(401, "invalid_api_key", "Invalid API key")
        return None

    def route(self, req):
        if req.method == "POST" and req.path == "/v1/voices/add":
            return self.add_voice(req)
        mdel = re.fullmatch(r"/v1/voices/([^/]+)", req.path)
        if req.method == "DELETE" and mdel:
            bad = self.auth(req)
            if bad:
                return bad
            vid = mdel.group(1)
            if vid not in self.added:
                return self._err(400, "voice_does_not_exist", f"A voice with the voice_id {vid} does not exist.")
            del self.added[vid]
            self.eng.record_drop(vid)
            return jresp(200, {"status": "ok"})
        if req.method == "GET" and req.path in ("/v1/voices", "/v1/models"):
            bad = self.auth(req)
            if bad:
                return bad
            if req.path == "/v1/voices":
                return jresp(200, {"voices": [{"voice_id": v, "name": n, "category": "premade", "labels": {},
                                               "preview_url": None, "settings": None} for v, n in self.voices()]})
            return jresp(200, [{"model_id": m, "name": m.replace("_", " ").title(), "can_do_text_to_speech": True,
                                "languages": [{"language_id": "en", "name": "English"}]} for m in ELEVEN_MODELS])
        m = re.fullmatch(r"/v1/text-to-speech/([^/]+)(/stream)?", req.path)
        if not m:
            return self.not_found(req)
        if req.method != "POST":
            return jresp(405, {"detail": "Method Not Allowed"})
        bad = self.auth(req)
        if bad:
            return bad
        voice_id, stream = m.group(1), bool(m.group(2))
        ofmt = req.query.get("output_format", "mp3_44100_128")
        spec = eleven_format(ofmt)
        if spec is None:
            return jresp(422, {"detail": [{"loc": ["query", "output_format"], "msg": "value is not a valid enumeration "
                                           "member", "type": "type_error.enum"}]})
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return jresp(400, {"detail": {"status": "invalid_json", "message": "Request body is not valid JSON."}})
        if "text" not in body:
            return jresp(422, {"detail": [{"loc": ["body", "text"], "msg": "field required",
                                           "type": "value_error.missing"}]})
        if voice_id not in [v for v, _ in self.voices()]:
            return self._err(404, "voice_not_found", f"A voice with the voice_id {voice_id} was not found.")
        if voice_id in self.added:
            self.eng.record_use(voice_id)
        model = body.get("model_id", "eleven_multilingual_v2")
        if model not in ELEVEN_MODELS:
            return self._err(400, "model_not_found", f"A model with model ID {model} does not exist.")
        vs = body.get("voice_settings") or {}
        speed = vs.get("speed", 1.0) if isinstance(vs, dict) else 1.0
        if not isinstance(speed, (int, float)) or not 0.7 <= speed <= 1.2:
            return jresp(400, {"detail": {"status": "invalid_voice_settings",
                                          "message": "voice_settings.speed must be between 0.7 and 1.2"}})
        text = body["text"]
        if not isinstance(text, str) or not text.strip():
            return self._err(400, "empty_text", "Text must not be empty.")
        container, rate, br, ct = spec
        data = self.audio(text, voice_id, container, rate=rate, speed=speed, bitrate=br)
        hdrs = [("request-id", uuid.uuid4().hex), ("history-item-id", uuid.uuid4().hex[:20]),
                ("x-character-count", str(len(text)))]
        if stream:
            return Resp(200, ctype=ct, headers=hdrs, chunks=self.chunks(data), ok=True)
        return Resp(200, data, ct, hdrs, ok=True)


# ---- 7b. Azure Speech -------------------------------------------------------------------------

AZURE_VOICES = [("en-US-JennyNeural", "en-US", "Female"), ("en-US-GuyNeural", "en-US", "Male"),
                ("en-US-AriaNeural", "en-US", "Female"), ("en-GB-SoniaNeural", "en-GB", "Female"),
                ("de-DE-KatjaNeural", "de-DE", "Female"), ("zh-CN-XiaoxiaoNeural", "zh-CN", "Female")]
AZURE_RATES = {"8khz": 8000, "16khz": 16000, "22050hz": 22050, "24khz": 24000, "44100hz": 44100, "48khz": 48000}


def azure_format(name):
    """X-Microsoft-OutputFormat → (container, rate, bitrate, content type) or None."""
    name = (name or "").strip().lower()
    m = re.fullmatch(r"(riff|raw)-(8khz|16khz|22050hz|24khz|44100hz|48khz)-16bit-mono-pcm", name)
    if m:
        # Azure answers audio/x-wav for riff-* and raw-* alike: key decoding off the requested format
        return ("wav" if m.group(1) == "riff" else "pcm"), AZURE_RATES[m.group(2)], None, "audio/x-wav"
    m = re.fullmatch(r"audio-(16|24|48)khz-(32|48|64|96|128|160|192)kbitrate-mono-mp3", name)
    if m:
        return "mp3", int(m.group(1)) * 1000, m.group(2) + "k", "audio/mpeg"
    m = re.fullmatch(r"(ogg|webm)-(16|24|48)khz-16bit-mono-opus", name)
    if m and m.group(1) == "ogg":
        return "opus", int(m.group(2)) * 1000, None, "audio/ogg"
    m = re.fullmatch(r"(raw|riff)-8khz-8bit-mono-(mulaw|alaw)", name)
    if m and m.group(1) == "raw":
        return m.group(2), 8000, None, "audio/basic" if m.group(2) == "mulaw" else "audio/alaw"
    return None


class Azure(Proto):
    default_rate = 24000
    synth_paths = (r"/cognitiveservices/v1",)

    def __init__(self, eng):
        super().__init__(eng)
        self.tokens = set()

    def err_500(self, status, params):
        return empty_resp(status)

    def err_429(self, params):
        return empty_resp(429, [("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        return empty_resp(params.get("status", 400))

    def not_found(self, req):
        return empty_resp(404)

    def authorized(self, req):
        key = self.eng.api_key
        if not key:
            return True
        if req.header("Ocp-Apim-Subscription-Key") == key:
            return True
        h = req.header("Authorization") or ""
        return h.startswith("Bearer ") and (h[7:].strip() in self.tokens or h[7:].strip() == key)

    def route(self, req):
        if req.path == "/sts/v1.0/issueToken" and req.method == "POST":
            if self.eng.api_key and req.header("Ocp-Apim-Subscription-Key") != self.eng.api_key:
                return empty_resp(401)
            tok = "fake-token-" + uuid.uuid4().hex
            self.tokens.add(tok)
            return Resp(200, tok.encode(), "text/plain; charset=us-ascii")
        if req.path == "/cognitiveservices/voices/list" and req.method == "GET":
            if not self.authorized(req):
                return empty_resp(401)
            return jresp(200, [{"Name": f"Microsoft Server Speech Text to Speech Voice ({loc}, {n.split('-')[2]})",
                                "DisplayName": n.split("-")[2].replace("Neural", ""), "LocalName": n.split("-")[2],
                                "ShortName": n, "Gender": g, "Locale": loc, "LocaleName": loc,
                                "SampleRateHertz": "24000", "VoiceType": "Neural", "Status": "GA",
                                "WordsPerMinute": "150"} for n, loc, g in AZURE_VOICES])
        if req.path != "/cognitiveservices/v1":
            return self.not_found(req)
        if req.method != "POST":
            return empty_resp(405)
        if not self.authorized(req):
            return empty_resp(401)
        if not req.ctype.startswith("application/ssml+xml"):
            return empty_resp(415)
        ofmt = req.header("X-Microsoft-OutputFormat") or "riff-16khz-16bit-mono-pcm"
        spec = azure_format(ofmt)
        if spec is None:
            return empty_resp(400)
        try:
            root = ET.fromstring(req.body)
        except ET.ParseError:
            return empty_resp(400)
        if root.tag.split("}")[-1] != "speak":
            return empty_resp(400)
        voice_el = None
        for el in root.iter():
            if el.tag.split("}")[-1] == "voice":
                voice_el = el
                break
        if voice_el is None or not voice_el.get("name"):
            return empty_resp(400)
        voice = voice_el.get("name")
        if voice not in [v for v, _, _ in AZURE_VOICES] + list(self.opts.get("voices", [])):
            return empty_resp(400)
        text = " ".join("".join(voice_el.itertext()).split())
        if not text:
            return empty_resp(400)
        speed = 1.0
        for el in voice_el.iter():
            if el.tag.split("}")[-1] == "prosody" and el.get("rate"):
                r = el.get("rate").strip()
                try:
                    speed = (1 + float(r[:-1]) / 100) if r.endswith("%") else float(r)
                except ValueError:
                    return empty_resp(400)
        container, rate, br, ct = spec
        data = self.audio(text, voice, container, rate=rate, speed=speed, bitrate=br)
        return Resp(200, ctype=ct, chunks=self.chunks(data), ok=True,
                    headers=[("X-RequestId", uuid.uuid4().hex)])


# ---- node (a ttshub worker node) --------------------------------------------------------------

NODE_CT = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
           "pcm": "audio/pcm"}


class Node(Proto):
    default_rate = 24000
    synth_paths = (r"/synthesize",)

    def __init__(self, eng):
        super().__init__(eng)
        self.status = "active"
        self.inflight = 0
        self.node_id = self.opts.get("node_id", "fake-node-" + uuid.uuid4().hex[:8])
        self.store = {}         # reference sha256 -> WAV bytes (POST /__fake/forget empties it, as a restart)

    def forget(self):
        self.store.clear()

    def _err(self, status, message, code, headers=None):
        return jresp(status, {"success": False, "message": message, "code": code}, headers=headers)

    def err_500(self, status, params):
        if params.get("shape") == "html":
            return html_500()
        return self._err(status, "engine failed (fake fault)", "engine_error")

    def err_429(self, params):
        return self._err(429, "node is busy", "rate_limited", [("Retry-After", str(params.get("retry_after", 1)))])

    def err_4xx(self, params):
        return self._err(params.get("status", 400), "unknown voice", "invalid_request")

    def not_found(self, req):
        return self._err(404, "not found", "not_found")

    def route(self, req):
        if req.path == "/health" and req.method == "GET":
            return jresp(200, {"status": "healthy" if self.status == "active" else self.status, "model_loaded": True,
                               "current_concurrent": self.inflight, "queue_size": 0})
        if req.path == "/info" and req.method == "GET":
            return jresp(200, {"node_id": self.node_id, "engine_type": self.opts.get("engine", "fake"),
                               "capacity": int(self.opts.get("capacity", 4)), "status": self.status,
                               "model_loaded": True, "voices": list(self.opts.get("voices", ["default"])),
                               "languages": ["en"], "formats": list(NODE_CT), "sample_rate": self.rate})
        if req.path == "/command" and req.method == "POST":
            try:
                cmd = req.json().get("command")
            except (ValueError, AttributeError):
                cmd = None
            if cmd not in ("activate", "standby", "stop"):
                return self._err(400, f"unknown command: {cmd}", "invalid_request")
            self.status = {"activate": "active", "standby": "standby", "stop": "stopped"}[cmd]
            return jresp(200, {"success": True, "status": self.status})
        if req.path != "/synthesize":
            return self.not_found(req)
        if req.method != "POST":
            return self._err(405, "method not allowed", "method_not_allowed")
        if self.status != "active":
            return self._err(503, f"node is {self.status}", "unavailable", [("Retry-After", "1")])
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return self._err(400, "body is not valid JSON", "invalid_request")
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return self._err(400, "text is required", "invalid_request")
        fmt = body.get("format") or "wav"
        if fmt not in NODE_CT:
            return self._err(400, f"unsupported format: {fmt}", "invalid_request")
        voice = body.get("voice") or "default"
        known = self.opts.get("voices")
        if known is not None and voice not in known and body.get("reference_sha256") is None:
            return self._err(404, f"unknown voice: {voice}", "voice_not_found")
        try:
            speed = float(body.get("speed") or 1.0)
        except (TypeError, ValueError):
            return self._err(400, "speed must be a number", "invalid_request")
        if not 0.25 <= speed <= 4.0:
            return self._err(400, "speed out of range 0.25..4.0", "invalid_request")
        sha = body.get("reference_sha256")
        if sha is not None:
            import hashlib
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                return self._err(400, "reference_sha256 must be 64 hex digits", "invalid_request")
            audio = body.get("reference_audio")
            if audio is not None:
                try:
                    data = base64.b64decode(audio, validate=True)
                except (ValueError, TypeError):
                    return self._err(400, "reference_audio is not base64", "invalid_request")
                if hashlib.sha256(data).hexdigest() != sha:
                    return self._err(400, "reference_audio does not match reference_sha256", "invalid_request")
                self.store[sha] = data
                self.eng.record_ref("node", data, body.get("reference_text"), sha256=sha,
                                   lang=body.get("reference_language"), voice=voice)
            elif sha not in self.store:
                return self._err(409, "the node does not hold this reference", "reference_missing")
            else:
                self.eng.record_use(sha)
        ref = body.get("reference")
        vkey = voice if not ref else {"voice": voice, "reference": ref}
        data = self.audio(text, vkey, fmt, speed=speed)
        return Resp(200, data, NODE_CT[fmt], [("X-Node-Id", self.node_id),
                                              ("X-Engine", str(self.opts.get("engine", "fake")))], ok=True)


PROTOS = {"openai": OpenAI, "openai_fm": OpenAIFM, "gpt_sovits": GptSovitsV2, "gpt_sovits_v1": GptSovitsV1,
          "xtts": Xtts, "openvoice": OpenVoice, "cosyvoice": CosyVoice, "fish": Fish, "elevenlabs": ElevenLabs,
          "azure": Azure, "node": Node}


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    # -- plumbing
    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = []
            while True:
                line = self.rfile.readline(65537)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out.append(self.rfile.read(n))
                self.rfile.readline(3)
            return b"".join(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _write(self, data):
        self.wfile.write(data)

    def _head_bytes(self, status, headers):
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
                 "date: " + self.date_time_string(), "server: uvicorn"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _rst(self):
        """Close the connection with a TCP RST (SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            fd = self.connection.detach()
            os.close(fd)
        except OSError:
            pass

    def _fin(self):
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _dispatch(self):
        eng = self.server.engine
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        req = Req(self.command, self.path, self.headers, body)
        if req.path.startswith("/__fake/"):
            return self._send(eng._control(req), None)
        proto = eng.proto
        is_synth = proto.is_synth(req.method, req.path)
        eng._record(req, is_synth)
        fault = eng._take_fault(is_synth)
        name = fault[0] if fault else None
        params = fault[1] if fault else {}
        if name == "reset_before":
            return self._rst()
        if name == "garbage":
            try:
                self._write(params.get("data", "\x16\x03\x01\x02\x00garbage\x00\xff not http at all\r\n\r\n")
                            .encode("latin-1", "replace"))
            except OSError:
                pass
            return self._fin()
        if name == "slow_first_byte":
            time.sleep(float(params.get("seconds", 2.0)))
        if name == "status_500":
            st = int(params.get("status", 500))
            shape = params.get("shape")
            resp = html_500() if shape == "html" else empty_resp(st) if shape == "empty" else proto.err_500(st, params)
            resp.status = st
            return self._send(resp, None)
        if name == "status_429":
            resp = proto.err_429(params)
            if not any(k.lower() == "retry-after" for k, _ in resp.headers):
                resp.headers.append(("Retry-After", str(params.get("retry_after", 1))))
            return self._send(resp, None)
        if name == "status_4xx":
            return self._send(proto.err_4xx(params), None)
        if is_synth and eng.latency > 0:
            time.sleep(eng.latency)
        try:
            with eng._lock:
                if isinstance(proto, Node):
                    proto.inflight += 1
            try:
                resp = proto.route(req)
            finally:
                with eng._lock:
                    if isinstance(proto, Node):
                        proto.inflight -= 1
        except Exception:   # the engine crashed: uvicorn's plain-text 500
            traceback.print_exc()
            resp = uvicorn_500()
        if resp.ok:
            with eng._lock:
                eng._ok += 1
        self._send(resp, (name, params) if name in ("wrong_content_type", "reset_after", "truncated") else None)

    def _send(self, resp, fault):
        eng = self.server.engine
        if resp.close:
            return self._fin()
        name, params = fault if fault else (None, {})
        headers = list(resp.headers)
        if name == "wrong_content_type":
            new = params.get("content_type", "text/html; charset=utf-8")
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"] + [("Content-Type", new)]
        chunked = resp.chunks is not None or name == "truncated"
        chunks = resp.chunks if resp.chunks is not None else ag.split(resp.body, eng.chunk_bytes)
        if self.command == "HEAD":
            chunks = []
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(resp.body))))
        if self.close_connection or name:
            headers.append(("Connection", "close"))
            self.close_connection = True
        try:
            head = self._head_bytes(resp.status, headers)
            if name == "reset_after":
                limit = int(params.get("bytes", 1024))
                data = resp.all_bytes()[:limit]
                if chunked:
                    out = (b"%x\r\n" % len(data) + data + b"\r\n") if data else b""
                else:
                    out = data
                self._write(head + out)
                time.sleep(float(params.get("pause", 0.05)))
                return self._rst()
            if name == "truncated":
                total = sum(len(c) for c in chunks)
                limit = int(params.get("bytes", max(1, total // 2)))
                limit = min(limit, max(total - 1, 0))
                self._write(head)
                sent = 0
                for c in chunks:
                    if sent >= limit:
                        break
                    c = c[:limit - sent]
                    if c:
                        self._write(b"%x\r\n" % len(c) + c + b"\r\n")
                        sent += len(c)
                    if eng.chunk_delay:
                        time.sleep(eng.chunk_delay)
                return self._fin()
            if not chunked:
                self._write(head + resp.body if self.command != "HEAD" else head)
                return
            first = True
            self._write(head)
            for c in chunks:
                if not c:
                    continue
                if not first and eng.chunk_delay:
                    time.sleep(eng.chunk_delay)
                first = False
                self._write(b"%x\r\n" % len(c) + c + b"\r\n")
            if resp.abort:
                return self._fin()
            self._write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


# --------------------------------------------------------------------------------------------
# FakeEngine
# --------------------------------------------------------------------------------------------

class FakeEngine:
    """A fake TTS engine of one kind on 127.0.0.1.

    kind: one of KINDS ("gpt_sovits" is api_v2; "gpt_sovits_v1" is api.py; also FakeEngine("gpt_sovits",
    api="v1")). options (kind specific): speakers/voices/references lists, v1 ``stream_mode``
    ("close"|"normal") and ``media_type`` for gpt_sovits_v1, ``chunk_bytes`` (default 16384),
    ``record_max`` (default 500), ``host``, ``port``.
    """

    def __init__(self, kind, api_key=None, latency=0.0, chunk_delay=0.0, ms_per_char=60, sample_rate=None,
                 **options):
        if kind == "gpt_sovits" and options.get("api") == "v1":
            kind = "gpt_sovits_v1"
        if kind not in PROTOS:
            raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        self.kind = kind
        self.api_key = api_key
        self.latency = float(latency)
        self.chunk_delay = float(chunk_delay)
        self.ms_per_char = ms_per_char
        self.sample_rate = sample_rate
        self.chunk_bytes = int(options.pop("chunk_bytes", DEFAULT_CHUNK_BYTES))
        self.host = options.pop("host", "127.0.0.1")
        self._want_port = int(options.pop("port", 0))
        self.options = options
        self._lock = threading.Lock()
        self._requests = collections.deque(maxlen=int(options.pop("record_max", 500)))
        self._calls = 0
        self._ok = 0
        self._by_path = collections.Counter()
        self._fault = None          # (name, params, remaining or None, scope)
        self._refs = []             # library references received (bounded)
        self._ref_uses = collections.Counter()
        self._drops = []
        self._server = None
        self._thread = None
        self._refusing = False
        self.port = None
        self.proto = PROTOS[kind](self)

    # -- lifecycle
    def start(self):
        self._listen(self._want_port)
        return self

    def _listen(self, port):
        srv = _Server((self.host, port), _Handler)
        srv.engine = self
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-{self.kind}-{self.port}", daemon=True)
        self._thread.start()

    def _close_listener(self):
        srv = self._server
        if srv is None:
            return
        self._server = None
        srv.shutdown()
        srv.server_close()

    def stop(self):
        self._refusing = False
        self._close_listener()

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    # -- observation
    @property
    def calls(self):
        """Synthesis requests received (every attempt that reached the fake, whatever its outcome)."""
        return self._calls

    @property
    def ok(self):
        """Synthesis requests answered with audio."""
        return self._ok

    @property
    def requests(self):
        """Recorded (method, path, headers, body) of engine requests, oldest first (bounded)."""
        with self._lock:
            return list(self._requests)

    def stats(self):
        with self._lock:
            f = self._fault
            return {"kind": self.kind, "calls": self._calls, "ok": self._ok, "requests": len(self._requests),
                    "by_path": dict(self._by_path),
                    "fault": None if not f else {"fault": f[0], "params": f[1], "remaining": f[2], "scope": f[3]},
                    "latency": self.latency, "chunk_delay": self.chunk_delay, "ms_per_char": self.ms_per_char,
                    "sample_rate": self.proto.rate}

    # -- library references (voice cloning)
    def record_ref(self, via, audio, text, **extra):
        """A reference received: via inline (in the synthesis request), upload (openvoice), add (elevenlabs),
        file (read from the shared folder) or node (bytes resent to a node)."""
        with self._lock:
            if len(self._refs) < 200:
                self._refs.append(dict(extra, via=via, audio=bytes(audio), text=text))

    def record_use(self, key):
        with self._lock:
            self._ref_uses[key] += 1

    def record_drop(self, key):
        with self._lock:
            self._drops.append(key)

    @property
    def references(self):
        """[{via, audio, text, ...}] of the references received, oldest first."""
        with self._lock:
            return [dict(r) for r in self._refs]

    @property
    def reference_uses(self):
        """{label / voice id / sha256: times a stored reference was used without being sent again}."""
        with self._lock:
            return dict(self._ref_uses)

    @property
    def drops(self):
        with self._lock:
            return list(self._drops)

    def forget(self):
        """Forget what was uploaded or stored (an engine or node restart)."""
        if hasattr(self.proto, "forget"):
            self.proto.forget()

    def reset(self):
        self.clear_fault()
        with self._lock:
            self._refs.clear()
            self._ref_uses.clear()
            self._drops.clear()
            self._calls = 0
            self._ok = 0
            self._requests.clear()
            self._by_path.clear()

    # -- faults
    def set_fault(self, name, count=None, scope="synth", **params):
        """Arm a fault for the next ``count`` requests (None = until cleared).

        scope "synth" (default) applies it to synthesis routes only; "all" to every engine route.
        refuse: closes the listening socket now (``count`` ignored); ``seconds=S`` reopens after S.
        """
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; faults: {', '.join(FAULTS)}")
        if name == "refuse":
            with self._lock:
                self._fault = None
            if not self._refusing:
                self._refusing = True
                self._close_listener()
            secs = params.get("seconds")
            if secs is not None:
                t = threading.Timer(float(secs), self._reopen)
                t.daemon = True
                t.start()
            return self
        with self._lock:
            self._fault = (name, dict(params), None if count is None else int(count), scope)
        return self

    def _reopen(self):
        if self._refusing:
            self._refusing = False
            self._listen(self.port)

    def clear_fault(self):
        with self._lock:
            self._fault = None
        self._reopen()
        return self

    def _take_fault(self, is_synth):
        with self._lock:
            f = self._fault
            if not f:
                return None
            name, params, remaining, scope = f
            if scope != "all" and not is_synth:
                return None
            if remaining is not None:
                remaining -= 1
                self._fault = (name, params, remaining, scope) if remaining > 0 else None
            return name, params

    def _record(self, req, is_synth):
        with self._lock:
            self._requests.append((req.method, req.target, dict(req.headers.items()), req.body))
            self._by_path[req.path] += 1
            if is_synth:
                self._calls += 1

    # -- HTTP control
    def _control(self, req):
        p = req.path
        try:
            body = req.json() if req.body else {}
        except ValueError:
            return jresp(400, {"error": "control body must be JSON"})
        if p == "/__fake/stats" and req.method == "GET":
            return jresp(200, self.stats())
        if p == "/__fake/requests" and req.method == "GET":
            with self._lock:
                rows = [{"method": m, "path": t, "headers": h, "body": b[:4096].decode("utf-8", "replace"),
                         "body_len": len(b)} for m, t, h, b in self._requests]
            return jresp(200, rows)
        if p == "/__fake/references" and req.method == "GET":
            rows = []
            for r in self.references:
                row = {k: v for k, v in r.items() if k not in ("audio", "pcm")}
                row["bytes"] = len(r["audio"])
                if "pcm" in r:
                    row["pcm_sha256"] = hashlib.sha256(r["pcm"]).hexdigest()
                row["wav"] = wav_info(r["audio"])
                rows.append(row)
            return jresp(200, {"references": rows, "uses": self.reference_uses, "drops": self.drops})
        if p == "/__fake/forget" and req.method == "POST":
            self.forget()
            return jresp(200, {"ok": True})
        if p == "/__fake/reset" and req.method == "POST":
            self.reset()
            return jresp(200, {"ok": True})
        if p == "/__fake/fault" and req.method == "POST":
            if not isinstance(body, dict) or "fault" not in body:
                return jresp(400, {"error": "need {\"fault\": name}"})
            params = dict(body)
            name = params.pop("fault")
            if name in (None, "", "none", "clear"):
                self.clear_fault()
                return jresp(200, {"ok": True, "fault": None})
            count = params.pop("count", None)
            scope = params.pop("scope", "synth")
            if name not in FAULTS:
                return jresp(400, {"error": f"unknown fault {name}", "faults": list(FAULTS)})
            if name == "refuse":
                # answer first, then close the listener
                threading.Timer(0.05, lambda: self.set_fault("refuse", **params)).start()
                return jresp(200, {"ok": True, "fault": name, "reopen_after": params.get("seconds")})
            self.set_fault(name, count=count, scope=scope, **params)
            return jresp(200, {"ok": True, "fault": name, "count": count, "scope": scope})
        if p == "/__fake/config" and req.method == "POST":
            for k in ("latency", "chunk_delay"):
                if k in body:
                    setattr(self, k, float(body[k]))
            if "ms_per_char" in body:
                self.ms_per_char = body["ms_per_char"]
            if "chunk_bytes" in body:
                self.chunk_bytes = int(body["chunk_bytes"])
            return jresp(200, self.stats())
        return jresp(404, {"error": "unknown control route"})


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fakes.engines", description="Run one fake TTS engine.")
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each synthesis answer")
    ap.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    ap.add_argument("--ms-per-char", type=float, default=60)
    ap.add_argument("--sample-rate", type=int, default=None)
    ap.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="kind option; VALUE is JSON when it parses, else a string")
    a = ap.parse_args(argv)
    opts = {}
    for kv in a.option:
        k, _, v = kv.partition("=")
        try:
            opts[k] = json.loads(v)
        except ValueError:
            opts[k] = v
    f = FakeEngine(a.kind, api_key=a.api_key, latency=a.latency, chunk_delay=a.chunk_delay,
                   ms_per_char=a.ms_per_char, sample_rate=a.sample_rate, chunk_bytes=a.chunk_bytes, host=a.host,
                   port=a.port, **opts).start()
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    print(f"READY {f.port}", flush=True)
    while not stop.wait(0.5):
        pass
    f.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
