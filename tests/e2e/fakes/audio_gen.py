"""Deterministic, speech-like fake audio for the engine fakes.

Pure Python makes the PCM: every character of the text gets one "syllable" block of
``ms_per_char`` milliseconds (divided by ``speed``): letters and digits are a tone with two
harmonics under a half-sine envelope, everything else is silence. The base pitch comes from a
CRC of the voice, so two voices give different bytes; the exact length is
``round(len(text) * ms_per_char / 1000 * rate / speed)`` samples (code points, not bytes).

Compressed formats are encoded with the ``ffmpeg`` CLI and cached (bounded LRU) by
(text hash, voice, format, rate, ms_per_char, speed, bitrate), so repeats are cheap.
"""
import array
import hashlib
import json
import math
import struct
import subprocess
import sys
import threading
import zlib
from collections import OrderedDict

DEFAULT_MS_PER_CHAR = 60
AMPLITUDE = 0.45

_lock = threading.Lock()
_blocks = {}
_cache = OrderedDict()
_CACHE_MAX = 512


def voice_key(voice):
    if isinstance(voice, str):
        return voice
    return json.dumps(voice, sort_keys=True, default=str)


def voice_pitch(voice):
    """Base pitch in Hz (90.0 .. 389.9) derived from the voice name."""
    return 90.0 + (zlib.crc32(voice_key(voice).encode("utf-8")) % 3000) / 10.0


def n_samples(text, rate, ms_per_char=DEFAULT_MS_PER_CHAR, speed=1.0):
    speed = float(speed) if speed else 1.0
    return int(round(len(text) * ms_per_char / 1000.0 * rate / speed))


def duration_seconds(text, ms_per_char=DEFAULT_MS_PER_CHAR, speed=1.0):
    speed = float(speed) if speed else 1.0
    return len(text) * ms_per_char / 1000.0 / speed


def _block(freq, rate, n, fmt):
    key = (freq, rate, n, fmt)
    b = _blocks.get(key)
    if b is not None:
        return b
    if freq <= 0 or n <= 0:
        b = bytes(n * (4 if fmt == "f32" else 2))
    else:
        w = 2.0 * math.pi * freq / rate
        vals = []
        for i in range(n):
            env = math.sin(math.pi * (i + 0.5) / n)
            x = i * w
            vals.append(AMPLITUDE * env * (0.6 * math.sin(x) + 0.3 * math.sin(2 * x) + 0.1 * math.sin(3 * x)))
        if fmt == "f32":
            a = array.array("f", vals)
        else:
            a = array.array("h", (int(v * 32767) for v in vals))
        if sys.byteorder != "little":
            a.byteswap()
        b = a.tobytes()
    with _lock:
        if len(_blocks) > 4096:
            _blocks.clear()
        _blocks[key] = b
    return b


def pcm(text, voice, rate, ms_per_char=DEFAULT_MS_PER_CHAR, speed=1.0, fmt="s16"):
    """Headerless mono PCM: fmt "s16" (int16 LE) or "f32" (float32 LE)."""
    total = n_samples(text, rate, ms_per_char, speed)
    nchar = len(text)
    if nchar == 0 or total == 0:
        return b""
    f0 = voice_pitch(voice)
    out = []
    for i, c in enumerate(text):
        n = (i + 1) * total // nchar - i * total // nchar
        if c.isalnum():
            freq = round(f0 * (1.0 + ((ord(c.lower()) % 5) - 2) * 0.04), 1)
        else:
            freq = 0
        out.append(_block(freq, rate, n, fmt))
    return b"".join(out)


def wav_header(rate, data_size, channels=1, bits=16, riff_size=None):
    """Canonical 44-byte PCM WAV header. data_size 0 or 0xFFFFFFFF for streams."""
    if riff_size is None:
        riff_size = 0xFFFFFFFF if data_size == 0xFFFFFFFF else 36 + data_size
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits) +
            b"data" + struct.pack("<I", data_size))


def wav_float_header(rate, data_size, channels=1):
    """IEEE-float WAV header the way libsox/torchaudio write it: an 18-byte fmt chunk
    (format 3, cbSize 0) and a fact chunk before data (58 bytes in all, not 44)."""
    block = channels * 4
    fmt = struct.pack("<HHIIHHH", 3, channels, rate, rate * block, block, 32, 0)
    fact = b"fact" + struct.pack("<II", 4, data_size // block)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + fact + b"data" + struct.pack("<I", data_size)
    return b"RIFF" + struct.pack("<I", len(body) + data_size) + body


def wav(pcm_bytes, rate):
    return wav_header(rate, len(pcm_bytes)) + pcm_bytes


FFMPEG_ARGS = {
    # name: (muxer args, default bitrate or None)
    "mp3": (["-c:a", "libmp3lame", "-id3v2_version", "0", "-write_xing", "0", "-f", "mp3"], "128k"),
    "opus": (["-c:a", "libopus", "-f", "ogg"], "32k"),
    "ogg": (["-c:a", "libvorbis", "-f", "ogg"], None),          # Ogg Vorbis (GPT-SoVITS "ogg")
    "aac": (["-c:a", "aac", "-f", "adts"], "64k"),
    "flac": (["-c:a", "flac", "-f", "flac"], None),
    "mulaw": (["-c:a", "pcm_mulaw", "-f", "mulaw"], None),
    "alaw": (["-c:a", "pcm_alaw", "-f", "alaw"], None),
}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def encode(pcm_bytes, rate, fmt, out_rate=None, bitrate=None):
    """Encode int16 mono PCM at ``rate`` into ``fmt`` with the ffmpeg CLI (cached by content)."""
    out_rate = out_rate or rate
    if fmt == "opus" and out_rate not in OPUS_RATES:
        out_rate = 48000
    key = ("enc", hashlib.sha1(pcm_bytes).hexdigest(), rate, fmt, out_rate, bitrate)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    args, default_br = FFMPEG_ARGS[fmt]
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1",
           "-i", "pipe:0", "-ar", str(out_rate), "-ac", "1", "-fflags", "+bitexact", "-flags:a", "+bitexact"]
    br = bitrate or default_br
    if br:
        cmd += ["-b:a", str(br)]
    cmd += args + ["pipe:1"]
    out = subprocess.run(cmd, input=pcm_bytes, capture_output=True, check=True).stdout
    _cache_put(key, out)
    return out


def _cache_get(key):
    with _lock:
        v = _cache.get(key)
        if v is not None:
            _cache.move_to_end(key)
        return v


def _cache_put(key, value):
    with _lock:
        _cache[key] = value
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)


def synth(text, voice, fmt, rate, ms_per_char=DEFAULT_MS_PER_CHAR, speed=1.0, bitrate=None):
    """Whole file of ``text`` spoken by ``voice``.

    fmt: "pcm" (s16le headerless), "f32" (f32le headerless), "wav" (canonical 16-bit),
    "wav_f32" (float WAV with fmt/fact chunks), or an ffmpeg format of FFMPEG_ARGS.
    ``rate`` is the output rate (for opus, a rate libopus cannot take becomes 48000).
    """
    key = ("synth", hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest(), voice_key(voice), fmt, rate,
           ms_per_char, float(speed or 1.0), bitrate)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    if fmt == "f32" or fmt == "wav_f32":
        data = pcm(text, voice, rate, ms_per_char, speed, fmt="f32")
        if fmt == "wav_f32":
            data = wav_float_header(rate, len(data)) + data
    else:
        enc_rate = rate
        if fmt == "opus" and rate not in OPUS_RATES:
            enc_rate = 48000
        data = pcm(text, voice, enc_rate, ms_per_char, speed)
        if fmt == "wav":
            data = wav(data, rate)
        elif fmt != "pcm":
            data = encode(data, enc_rate, fmt, bitrate=bitrate)
    _cache_put(key, data)
    return data


def split(data, size):
    """Split bytes into pieces of ``size`` (the last may be shorter); at least one piece."""
    size = max(1, int(size))
    if not data:
        return [b""]
    return [data[i:i + size] for i in range(0, len(data), size)]
