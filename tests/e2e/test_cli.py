"""ttshub say and ttshub check."""
import os
import subprocess

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
