"""The Redis backend's cost per request: one blocking round trip before the first byte, and large cached audio
kept off the connections that answer limit checks. Counted with MONITOR on a real redis-server."""
import hashlib
import re
import socket
import threading
import time

import requests

from conftest import Hub
from fakes.engines import FakeEngine

KEY = "rt-key"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = {"Authorization": "Bearer " + KEY}


class Resp:
    """A minimal RESP2 client (the tests need no Redis library)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            return [self.read() for _ in range(int(rest))]
        raise ValueError(line)

    def call(self, *args):
        self.send(*args)
        return self.read()


class Monitor:
    """MONITOR in a thread: every command any client sends, with the sender's address."""

    LINE = re.compile(r'^[0-9.]+ \[\d+ ([^\]]+)\] "([^"]+)"')

    def __init__(self, port):
        self.c = Resp(port)
        self.c.call("CLIENT", "SETNAME", "test-monitor")
        assert self.c.call("MONITOR") == "OK"
        self.lines = []
        self.lock = threading.Lock()
        self.stop_flag = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        self.c.s.settimeout(0.2)
        while not self.stop_flag:
            try:
                line = self.c.read()
            except socket.timeout:
                continue
            except (OSError, ConnectionError):
                return
            m = self.LINE.match(line) if isinstance(line, str) else None
            if m:
                with self.lock:
                    self.lines.append((m.group(1), m.group(2).lower(), line))

    def snapshot(self):
        with self.lock:
            return list(self.lines)

    def close(self):
        self.stop_flag = True
        self.t.join(5)
        self.c.close()


def script_admissions(line):
    """The number of admissions a turn's EVALSHA carries (MONITOR's line: ARGV[4] after the keys)."""
    tok = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
    nkeys = int(tok[2])
    return int(tok[3 + nkeys + 3])


def hub_conns(port):
    """addr -> client name of the hubs' connections."""
    c = Resp(port)
    try:
        out = c.call("CLIENT", "LIST").decode()
    finally:
        c.close()
    conns = {}
    for row in out.splitlines():
        f = dict(kv.split("=", 1) for kv in row.split(" ") if "=" in kv)
        if f.get("name", "").startswith("ttshub-"):
            conns[f["addr"]] = f["name"]
    return conns


def wait_until(pred, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def cfg(redis_port, fake_url, extra=""):
    return (f"providers:\n  - name: up\n    type: openai_fm\n    base_url: \"{fake_url}\"\n    timeout: 30s\n"
            "    concurrency: 64\n    queue: 1000\n"
            f"redis: {{ url: \"redis://127.0.0.1:{redis_port}/0\", prefix: \"rt{redis_port}:\", timeout: 2s }}\n"
            "cache: { enabled: true, backend: redis }\n"
            "rate_limit: { global_rpm: 1000000, ip_rpm: 1000000, concurrency: 10000, backend: redis }\n"
            "auth:\n  mode: api_key\n  keys:\n"
            f"    - {{ id: k1, sha256: \"{SHA}\", tenant: acme, role: user }}\n"
            "tenants:\n  acme: { rpm: 1000000, concurrency: 10000, quota: { chars_per_day: 100000000 } }\n"
            + extra)


def metric(h, name, labels):
    text = h.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def gauge(h, name):
    """A metric without labels; an error when the hub does not have it."""
    for line in h.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def sent(h):
    """Redis commands the hub says it has sent (both lanes)."""
    return metric(h, "ttshub_redis_commands_total", {"lane": "policy"}) + \
        metric(h, "ttshub_redis_commands_total", {"lane": "bulk"})


def quiet(h):
    """Nothing of h waits for the loop turn's script (settles and cache stores wait for it up to 2 ms) and no
    command of the policy lane waits for its answer."""
    return gauge(h, "ttshub_redis_queued") == 0 and metric(h, "ttshub_redis_in_flight", {"lane": "policy"}) == 0


def settled(h, hub_cmds, base, sent_base, at_least):
    """MONITOR has seen every command the hub sent since the baseline (at least at_least), and none is pending:
    nothing more can follow for the request."""
    def ok():
        n = sent(h) - sent_base
        return n >= at_least and len(hub_cmds()) - base == n and quiet(h)
    wait_until(ok, what="the request's commands")


def wait_hub_connected(h, redis_port):
    wait_until(lambda: h.get("/health").json()["components"]["redis"]["connected"], what="redis connected")
    # every connection of the pool has named itself (the handshake is done)
    wait_until(lambda: len(hub_conns(redis_port)) >= 3, what="the pool's connections")


def test_one_blocking_round_trip_before_the_first_byte(hub_factory, redis_server):
    f = FakeEngine("openai_fm", latency=1.0).start()
    mon = None
    try:
        h = hub_factory(cfg(redis_server.port, f.url))
        wait_hub_connected(h, redis_server.port)
        # warm up: scripts loaded on the connections, nothing pending
        for i in range(4):
            assert h.post(data={"input": f"Warm up {i}.", "voice": "alloy"}, headers=AUTH).status_code == 200
        conns = hub_conns(redis_server.port)
        mon = Monitor(redis_server.port)

        def hub_cmds():
            return [(a, cmd, line) for a, cmd, line in mon.snapshot() if a in conns]

        # let the warm-up's settle scripts land, then take the baseline
        wait_until(lambda: quiet(h), what="quiet pool")
        base = len(hub_cmds())
        sent_base = sent(h)
        calls = f.calls
        out = {}

        def one():
            out["r"] = requests.post(h.url + "/api/generate", data={"input": "Counted request.", "voice": "alloy"},
                                     headers=AUTH, timeout=30)

        t = threading.Thread(target=one)
        t.start()
        # the engine holds the request for 1 s: everything Redis saw so far came before the first byte
        wait_until(lambda: f.calls > calls, what="the request to reach the engine")
        # MONITOR lines arrive on their own connection: wait until the admit command has been seen
        wait_until(lambda: len(hub_cmds()) > base, what="the admit command on MONITOR")
        before = hub_cmds()[base:]
        assert "r" not in out
        assert len(before) == 1, before
        assert before[0][1] == "evalsha", before
        assert conns[before[0][0]] == "ttshub-policy"
        t.join(30)
        r = out["r"]
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
        # after the response: the settle script and the store (on the bulk connection), then nothing more
        settled(h, hub_cmds, base, sent_base, 3)  # everything the hub sent has been seen: nothing else follows
        after = hub_cmds()[base + 1:]
        assert sorted(c for _, c, _ in after) == ["evalsha", "set"], after

        # a cache hit of small audio: one round trip, the audio comes back inside it
        base = len(hub_cmds())
        sent_base = sent(h)
        r = h.post(data={"input": "Counted request.", "voice": "alloy"}, headers=AUTH)
        assert r.status_code == 200 and r.headers["X-Cache"] == "HIT"
        settled(h, hub_cmds, base, sent_base, 2)
        cmds = [c for _, c, _ in hub_cmds()[base:]]
        assert cmds == ["evalsha", "evalsha"], cmds  # admit, then settle: no GET, no separate quota or limit call

        # the hub's own metric agrees: one round trip before the first byte per request
        n = metric(h, "ttshub_redis_round_trips_count", {"when": "before_first_byte"})
        s = metric(h, "ttshub_redis_round_trips_sum", {"when": "before_first_byte"})
        assert n == 6 and s == 6, (n, s)
        # each admission went in a loop turn's script: every one of the six is counted there once
        assert metric(h, "ttshub_redis_turn_requests_sum", {"part": "admissions"}) == 6
        assert 1 <= metric(h, "ttshub_redis_turn_requests_count", {"part": "admissions"}) <= 6
        # and every one of the six settles went in a script too (a settle rides with the next admissions, or
        # leaves on its own after 2 ms: the count of scripts depends on the timing, the settles do not)
        assert metric(h, "ttshub_redis_turn_requests_sum", {"part": "settles"}) == 6
        assert metric(h, "ttshub_redis_latency_seconds_count", {"lane": "policy"}) >= 6
    finally:
        if mon:
            mon.close()
        f.stop()


def test_large_cached_audio_stays_off_the_limit_connections(hub_factory, redis_server):
    """A 1 MiB cached answer travels on the bulk connection while 200 small requests (small cache hits) run.

    The bound is structural: every admission (EVALSHA) of the small requests goes to a policy connection and
    the 1 MiB value is only ever read (GET) on the bulk connection, so no limit check queues behind its bytes
    on a socket; a small request waits at most for the other small admissions on its own connection."""
    f = FakeEngine("openai_fm", ms_per_char=60).start()
    mon = None
    try:
        a = hub_factory(cfg(redis_server.port, f.url))
        b = hub_factory(cfg(redis_server.port, f.url))
        wait_hub_connected(a, redis_server.port)
        wait_hub_connected(b, redis_server.port)
        # ~23 s of 24 kHz 16-bit WAV: a little over 1 MiB, made (and stored in Redis) by hub A
        big_text = ("This sentence is long enough to make a large answer. " * 7)[:380]
        big = a.post(data={"input": big_text, "voice": "alloy", "response_format": "wav"}, headers=AUTH)
        assert big.status_code == 200 and big.headers["X-Cache"] == "MISS"
        assert len(big.content) >= 1 << 20, len(big.content)
        # 200 small answers made by hub A too: at hub B they are hits that come back inside the admission
        for i in range(200):
            r = a.post(data={"input": f"Small {i}.", "voice": "alloy", "response_format": "mp3"}, headers=AUTH)
            assert r.status_code == 200, r.text
        probe = Resp(redis_server.port)
        big_key = wait_until(lambda: [k for k in probe.call("KEYS", f"rt{redis_server.port}:cache:*")
                                      if probe.call("STRLEN", k) >= 1 << 20], what="the 1 MiB entry in Redis")[0]
        probe.close()
        conns = hub_conns(redis_server.port)
        mon = Monitor(redis_server.port)
        results = {}

        def large(i):
            r = requests.post(b.url + "/api/generate", headers=AUTH, timeout=60,
                              data={"input": big_text, "voice": "alloy", "response_format": "wav"})
            results[("big", i)] = (r.status_code, r.headers.get("X-Cache"), r.content)

        def small(i):
            r = requests.post(b.url + "/api/generate", headers=AUTH, timeout=60,
                              data={"input": f"Small {i}.", "voice": "alloy", "response_format": "mp3"})
            results[("small", i)] = (r.status_code, r.headers.get("X-Cache"), len(r.content))

        threads = [threading.Thread(target=large, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=small, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(3):
            status, xc, content = results[("big", i)]
            assert status == 200 and xc in ("HIT", "COALESCED")
            assert content[44:] == big.content[44:]
        bad = {i: results.get(("small", i)) for i in range(200)
               if results.get(("small", i), (0, ""))[:2] != (200, "HIT")}
        assert not bad, (bad, b.output()[-3000:])
        wait_until(lambda: quiet(b), what="quiet pool")

        def admitted():  # MONITOR's lines are read by a thread: the last ones may still be on their way
            # (a connection's first script is sent whole, with EVAL; EVALSHA after that)
            return sum(script_admissions(line) for addr, cmd, line in mon.snapshot()
                       if addr in conns and cmd in ("eval", "evalsha"))

        # every one of the 203 requests was admitted by a turn's script (a script carries a turn's admissions)
        wait_until(lambda: admitted() >= 203, what="the 203 admissions in MONITOR's lines")
        seen = [(conns.get(addr), cmd, line) for addr, cmd, line in mon.snapshot() if addr in conns]
        key = big_key.decode()
        gets_big = [s for s in seen if s[1] == "get" and key in s[2]]
        assert gets_big, "the large hit was never read from Redis"
        assert all(name == "ttshub-bulk" for name, _, _ in gets_big), gets_big
        admits = [s for s in seen if s[1] in ("eval", "evalsha")]
        assert all(name == "ttshub-policy" for name, _, _ in admits)
        # no policy connection ever read a cache value itself
        assert not [s for s in seen if s[0] == "ttshub-policy" and s[1] == "get"]
        # the hub counted two round trips (admit, then the bulk read) only for the large hits
        assert metric(b, "ttshub_redis_latency_seconds_count", {"lane": "bulk"}) >= 1
    finally:
        if mon:
            mon.close()
        f.stop()
