"""Every bad input gets the right status and error body, and the server keeps serving."""
import socket
import time

import pytest
import requests


def err(r, status, code=None, type_="invalid_request_error"):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert isinstance(e["message"], str) and e["message"]
    assert e["type"] == type_, e
    if code:
        assert e["code"] == code, e
    assert r.headers.get("X-Request-Id")
    return e


def still_serving(hub):
    r = hub.post(data={"input": "Still here.", "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200


def test_missing_input(hub):
    err(hub.post(data={"voice": "alloy"}), 400, "missing_input")
    err(hub.post(data={"input": "", "voice": "alloy"}), 400, "missing_input")
    err(hub.post(data={"input": "   ", "voice": "alloy"}), 400, "missing_input")
    still_serving(hub)


def test_missing_voice(hub):
    err(hub.post(data={"input": "hi"}), 400, "missing_voice")


def test_unknown_voice(hub):
    e = err(hub.post(data={"input": "hi", "voice": "no-such-voice-xyz"}), 400, "invalid_voice")
    assert "no-such-voice-xyz" in e["message"]
    still_serving(hub)


@pytest.mark.parametrize("fmt", ["mp4", "MP3", "ogg", "", " "])
def test_bad_format(hub, fmt):
    if fmt == "":  # empty means the default (mp3)
        r = hub.post(data={"input": "hi", "voice": "alloy", "response_format": fmt})
        assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg", r.text[:200]
        return
    err(hub.post(data={"input": "hi", "voice": "alloy", "response_format": fmt}), 400, "invalid_response_format")


@pytest.mark.parametrize("speed", ["0.1", "5", "fast", "nan", "inf", "1e9"])
def test_bad_speed(hub, speed):
    err(hub.post(data={"input": "hi", "voice": "alloy", "speed": speed}), 400, "invalid_speed")


def test_bad_generation(hub):
    err(hub.post(data={"input": "hi", "voice": "alloy", "generation": "bad id with spaces"}), 400,
        "invalid_generation")


def test_invalid_utf8(hub):
    r = hub.post(data=b"input=%FF%FE&voice=alloy", headers={"Content-Type": "application/x-www-form-urlencoded"})
    err(r, 400, "invalid_input")


def test_oversize_body(hub):
    r = hub.post(data={"input": "a" * (1024 * 1024 + 10), "voice": "alloy"})
    err(r, 413)
    still_serving(hub)


def test_oversize_headers(hub):
    r = hub.post(data={"input": "hi", "voice": "alloy"}, headers={"X-Big": "b" * (17 * 1024)})
    err(r, 431)
    still_serving(hub)


def test_malformed_form(hub):
    r = hub.post(data=b"input=%G1oops&voice=alloy", headers={"Content-Type": "application/x-www-form-urlencoded"})
    err(r, 400, "malformed_body")


def test_malformed_json(hub):
    r = hub.post(data=b'{"input": "hi", "voice": ', headers={"Content-Type": "application/json"})
    err(r, 400, "malformed_body")
    r = hub.post(data=b"[" * 5000, headers={"Content-Type": "application/json"})
    err(r, 400, "malformed_body")
    r = hub.post(data=b'["not", "an", "object"]', headers={"Content-Type": "application/json"})
    err(r, 400, "malformed_body")


def test_malformed_multipart(hub):
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\nhello\r\n"  # no closing boundary
    r = hub.post(data=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    err(r, 400, "malformed_body")


def test_wrong_media_type(hub):
    r = hub.post(data=b"input=hi&voice=alloy", headers={"Content-Type": "text/plain"})
    err(r, 415, "unsupported_media_type")
    r = hub.post(data=b"<xml/>", headers={"Content-Type": "application/xml"})
    err(r, 415)


def test_unknown_route_and_method(hub):
    err(hub.get("/nope"), 404, type_="not_found_error")
    r = hub.get("/api/generate")
    err(r, 405)
    assert "POST" in r.headers.get("Allow", "")


def raw(hub, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", hub.port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


def test_garbage_request_line(hub):
    out = raw(hub, b"\x00\x01\x02 garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out[:100]
    still_serving(hub)


def test_expect_continue_too_large(hub):
    req = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n")
    out = raw(hub, req)
    assert out.startswith(b"HTTP/1.1 413"), out[:100]


def test_expect_continue_accepted(hub):
    body = b"input=Hi+there.&voice=alloy&response_format=wav"
    s = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
              b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(body))
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 100 Continue"), first
    s.sendall(body)
    out = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        out += c
    s.close()
    assert b"HTTP/1.1 200" in out and b"audio/wav" in out


def test_chunked_request_body(hub):
    def gen():
        yield b"input=Chunked+"
        yield b"body+works.&voice=alloy"
        yield b"&response_format=wav"
    r = requests.post(hub.url + "/api/generate", data=gen(), timeout=30,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/wav"


def test_keepalive_and_pipelining(hub):
    body = b"input=One.&voice=alloy&response_format=wav"
    one = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(hub, one + health + one + last, timeout=30)
    assert out.count(b"HTTP/1.1 200") == 4, out[:300]
    # in order: audio, json, audio, json
    idx = [out.find(b"audio/wav"), out.find(b"application/json")]
    assert idx[0] < idx[1]
