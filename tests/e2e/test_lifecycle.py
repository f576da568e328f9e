"""Connections that misbehave, and draining on SIGTERM."""
import signal
import socket
import threading
import time

import requests

from audio import decoded_seconds

LONG = " ".join(["This is sentence number %d of a long text that keeps the engine busy for a while." % i
                 for i in range(200)])


def test_slowloris_is_cut(hub_factory):
    h = hub_factory("limits:\n  header_timeout: 1s\n")
    s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n")
    data = b""
    try:
        for _ in range(20):
            time.sleep(0.2)
            s.sendall(b"X-Slow: a\r\n")   # trickle headers forever
    except OSError:
        pass
    try:
        while True:
            c = s.recv(4096)
            if not c:
                break
            data += c
    except OSError:
        pass
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    r = h.post(data={"input": "Alive.", "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200


def test_client_disconnects_mid_stream(hub):
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
        body = ("input=" + LONG.replace(" ", "+") + "&voice=alloy&response_format=mp3").encode()
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        got = s.recv(1024)
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        s.close()  # go away while the audio is still streaming
    r = hub.post(data={"input": "Still serving.", "voice": "alloy", "response_format": "wav"})
    assert r.status_code == 200
    h = hub.get("/health").json()
    deadline = time.time() + 10
    while h["requests"]["in_flight"] != 0 and time.time() < deadline:
        time.sleep(0.1)
        h = hub.get("/health").json()
    assert h["requests"]["in_flight"] == 0


def test_slow_reader_gets_everything(hub):
    """Back-pressure: a reader that pauses still gets the whole, valid stream."""
    r = requests.post(hub.url + "/api/generate", stream=True, timeout=60,
                      data={"input": LONG[:6000], "voice": "alloy", "response_format": "pcm"})
    assert r.status_code == 200
    total = 0
    for i, chunk in enumerate(r.iter_content(16384)):
        total += len(chunk)
        if i < 20:
            time.sleep(0.05)
    assert total > 24000 * 2 * 20  # more than 20 s of audio


def test_sigterm_drains_in_flight_requests(hub_factory):
    h = hub_factory()
    results = [None] * 20
    text = " ".join(["Sentence %d keeps this request in flight a little longer." % i for i in range(15)])

    def one(i):
        try:
            r = requests.post(h.url + "/api/generate", timeout=120,
                              data={"input": text, "voice": "alloy", "response_format": "wav"})
            results[i] = (r.status_code, r.content)
        except Exception as e:  # noqa: BLE001
            results[i] = ("exc", repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    # wait until all 20 are in flight
    deadline = time.time() + 20
    while time.time() < deadline:
        inflight = requests.get(h.url + "/health", timeout=5).json()["requests"]["in_flight"]
        if inflight >= 20:
            break
        time.sleep(0.02)
    h.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    for i, res in enumerate(results):
        assert res is not None and res[0] == 200, (i, res if res is None else res[:1])
        assert decoded_seconds(res[1], "wav") > 10, i
    assert h.proc.wait(60) == 0
    # new connections are refused once it is gone
    try:
        requests.get(h.url + "/health", timeout=2)
        assert False, "still accepting after drain"
    except requests.ConnectionError:
        pass
