"""Decoding helpers for tests: everything is checked by decoding with FFmpeg's tools."""
import json
import os
import subprocess
import tempfile

EXT = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav", "pcm": "raw"}
CODEC = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}
MIME = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
        "wav": "audio/wav", "pcm": "audio/pcm"}


def probe(data, fmt):
    """ffprobe's view of the first audio stream: codec name, sample rate, channels."""
    with tempfile.NamedTemporaryFile(suffix="." + EXT[fmt]) as f:
        f.write(data)
        f.flush()
        args = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format"]
        if fmt == "pcm":
            args += ["-f", "s16le", "-ar", "24000", "-ac", "1"]
        out = subprocess.run(args + [f.name], capture_output=True, check=True).stdout
    info = json.loads(out)
    return info["streams"][0], info.get("format", {})


def decoded_seconds(data, fmt, rate=24000):
    """Decodes the whole file to s16le mono and returns its duration in seconds."""
    if fmt == "pcm":
        return len(data) / 2.0 / rate
    with tempfile.NamedTemporaryFile(suffix="." + EXT[fmt]) as f:
        f.write(data)
        f.flush()
        pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", f.name, "-f", "s16le", "-ac", "1", "-ar", "24000", "-"],
                             capture_output=True, check=True).stdout
    return len(pcm) / 2.0 / 24000


def resampled_pcm(data, rate):
    """Any audio file decoded to s16le mono at rate by FFmpeg (its default resampler, the one the hub uses)."""
    return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar",
                           str(rate), "pipe:1"], input=data, capture_output=True, check=True).stdout


def cosyvoice_got(rec, stored):
    """A reference the CosyVoice fake decoded (load_wav) is the stored WAV as the engine uses it: the compact form
    (16 kHz FLAC, a complete STREAMINFO) holds exactly the stored audio resampled to 16 kHz."""
    return (rec.get("format") == "flac" and rec["rate"] == 16000 and rec["streaminfo_samples"] == rec["frames"]
            and rec["pcm"] == resampled_pcm(stored, 16000))
