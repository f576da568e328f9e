"""ttshub say and ttshub check."""
import os
import pty
import re
import select
import struct
import subprocess
import time

import pytest

from audio import decoded_seconds, probe
from conftest import BIN, ROOT


def test_say_writes_audio(hub, tmp_path):
    out = tmp_path / "out.mp3"
    p = subprocess.run([BIN, "say", "Hello from the command line.", "-o", str(out), "--url", hub.url],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    assert probe(data, "mp3")[0]["codec_name"] == "mp3"
    assert decoded_seconds(data, "mp3") > 1.0


def test_say_reads_stdin_with_options(hub, tmp_path):
    out = tmp_path / "x.bin"
    p = subprocess.run([BIN, "say", "-", "-v", "onyx", "-f", "wav", "--speed", "1.5", "-o", str(out),
                        "--url", hub.url], input=b"Text from standard input.", capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:4] == b"RIFF"


def test_say_reports_hub_errors(hub, tmp_path):
    out = tmp_path / "none.mp3"
    p = subprocess.run([BIN, "say", "hi", "-v", "no-such-voice", "-o", str(out), "--url", hub.url],
                       capture_output=True, timeout=60)
    assert p.returncode == 1
    assert b"400" in p.stderr and b"no-such-voice" in p.stderr
    assert not out.exists()


def test_check_example_config():
    p = subprocess.run([BIN, "check", "-c", os.path.join(ROOT, "config", "ttshub.example.yaml")],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr


def test_check_reports_every_error_with_path(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lisen: 1\nlimits:\n  max_body: lots\nrouter:\n  strategy: fastest\n")
    p = subprocess.run([BIN, "check", "-c", str(f)], capture_output=True, timeout=30)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "lisen" in err and "limits.max_body" in err and "router.strategy" in err, err


def test_serve_refuses_bad_config(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("limits:\n  max_body: lots\n")
    p = subprocess.run([BIN, "serve", "-c", str(f), "--listen", "127.0.0.1:0"], capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"limits.max_body" in p.stderr


def test_version():
    p = subprocess.run([BIN, "--version"], capture_output=True, timeout=10)
    assert p.returncode == 0 and p.stdout.startswith(b"ttshub ")


LONG = " ".join("Sentence number %d is part of a long text for the progress bar." % i for i in range(40))


def run_on_pty(args, timeout=120):
    """Runs args with stderr on a pseudo-terminal (stdout a pipe); returns (rc, what the terminal showed)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 1.0)
        if not r:
            if p.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return p.wait(timeout=30), shown.decode()


def test_say_progress_bar_on_a_terminal(hub, tmp_path):
    out = tmp_path / "long.wav"
    rc, shown = run_on_pty([BIN, "say", LONG, "-o", str(out), "--url", hub.url])
    assert rc == 0, shown
    frames = [f for f in shown.split("\r") if "parts" in f]
    assert len(frames) >= 3, shown
    assert "ETA" in shown
    last = frames[-1]
    m = re.search(r"\[(#+)\] (\d+)/(\d+) parts\s+([\d.]+) s audio\s+took", last)
    assert m, last
    assert m.group(2) == m.group(3) and int(m.group(3)) >= 5  # every part done
    data = out.read_bytes()
    # the audio seconds shown are the seconds written; the WAV header has its exact sizes
    seconds = decoded_seconds(data, "wav")
    assert abs(float(m.group(4)) - seconds) < 0.2, (m.group(4), seconds)
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44
    assert seconds > 60


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_say_long_text_quiet_off_a_terminal(hub, tmp_path, fmt):
    out = tmp_path / ("long." + fmt)
    p = subprocess.run([BIN, "say", "-", "-f", fmt, "-o", str(out), "--url", hub.url], input=LONG.encode(),
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert b"parts" not in p.stderr and b"\r" not in p.stderr  # no bar when stderr is not a terminal
    data = out.read_bytes()
    assert probe(data, fmt)[0]["codec_name"] == {"mp3": "mp3", "opus": "opus", "flac": "flac"}[fmt]
    assert decoded_seconds(data, fmt) > 60


def test_say_long_text_to_stdout_and_part_errors(hub, tmp_path):
    p = subprocess.run([BIN, "say", LONG, "-f", "mp3", "--url", hub.url], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert decoded_seconds(p.stdout, "mp3") > 60
    out = tmp_path / "none.mp3"
    p = subprocess.run([BIN, "say", LONG, "-v", "no-such-voice", "-o", str(out), "--url", hub.url],
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and b"part 1 of" in p.stderr and b"no-such-voice" in p.stderr
    assert not out.exists()
