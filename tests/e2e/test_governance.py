"""Auth, rate limits, quotas and the cache: in one process, and shared through a real Redis."""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time

import pytest
import requests

from audio import decoded_seconds
from conftest import Hub, free_port, wait_until
from fakes.engines import FakeEngine

KEYS = {"acme-key": ("k1", "acme", "user"), "beta-key": ("k2", "beta", "user"), "root-key": ("k3", "acme", "admin")}
SECRET = "jwt-test-secret-0123456789abcdef0123"


def sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


def keys_yaml():
    return "".join(f"    - {{ id: {i}, sha256: \"{sha(k)}\", tenant: {t}, role: {r} }}\n"
                   for k, (i, t, r) in KEYS.items())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, alg="HS256", secret=SECRET, header=None):
    h = header or {"alg": alg, "typ": "JWT"}
    signing = b64(json.dumps(h).encode()) + "." + b64(json.dumps(claims).encode())
    if alg == "none":
        return signing + "."
    mac = hmac.new(secret.encode(), signing.encode(), {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg])
    return signing + "." + b64(mac.digest())


AUTH_CFG = f"""
auth:
  mode: any
  keys:
{keys_yaml()}  jwt: {{ alg: HS256, secret_env: TEST_JWT_SECRET, issuer: "ttshub-tests", audience: "ttshub", tenant_claim: tenant, role_claim: role }}
tenants:
  acme: {{ voices: ["*"] }}
  beta: {{ voices: ["echo"] }}
"""


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


def say(h, headers=None, voice="alloy", text="Auth check.", **kw):
    return h.post(data={"input": text, "voice": voice, "response_format": "wav"}, headers=headers or {}, **kw)


def test_auth_matrix(hub_factory):
    h = hub_factory(AUTH_CFG, env={"TEST_JWT_SECRET": SECRET})
    now = int(time.time())
    good = {"sub": "u1", "tenant": "acme", "role": "user", "iss": "ttshub-tests", "aud": "ttshub", "exp": now + 600}

    def unauthorized(r):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "authentication_error"

    unauthorized(say(h))                                               # no key
    unauthorized(say(h, bearer("wrong-key")))                          # wrong key
    unauthorized(say(h, {"X-API-Key": "wrong-key"}))
    assert say(h, bearer("acme-key")).status_code == 200
    assert say(h, {"X-API-Key": "acme-key"}).status_code == 200
    r = say(h, bearer("beta-key"))                                     # another tenant's key: its voices only
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert say(h, bearer("beta-key"), voice="echo").status_code == 200
    assert say(h, bearer(jwt(good))).status_code == 200
    unauthorized(say(h, bearer(jwt(good, alg="none"))))                # alg none
    unauthorized(say(h, bearer(jwt(good, alg="HS512"))))               # not the configured alg
    unauthorized(say(h, bearer(jwt(dict(good, exp=now - 3600)))))      # expired
    unauthorized(say(h, bearer(jwt(dict(good, nbf=now + 3600)))))      # not yet valid
    unauthorized(say(h, bearer(jwt(good, secret="another-secret-0123456789abcdef"))))  # bad signature
    unauthorized(say(h, bearer(jwt(dict(good, aud="someone-else")))))  # wrong audience
    unauthorized(say(h, bearer(jwt(dict(good, iss="evil")))))          # wrong issuer
    # admin routes: a user key is refused, the admin key and an admin token pass
    r = h.get("/admin/providers", headers=bearer("acme-key"))
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert h.get("/admin/providers", headers=bearer("root-key")).status_code == 200
    assert h.get("/admin/config", headers=bearer(jwt(dict(good, role="admin")))).status_code == 200
    cfg = h.get("/admin/config", headers=bearer("root-key")).text
    assert sha("acme-key") not in cfg and SECRET not in cfg
    unauthorized(h.get("/admin/usage"))
    # control routes need no credentials
    assert h.get("/health").status_code == 200


def test_rate_limits_exact_and_recover(hub_factory):
    cfg = """
auth:
  mode: api_key
  keys:
""" + keys_yaml() + """
tenants:
  acme: { rate: 1, burst: 3 }
  beta: { rpm: 4 }
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
"""
    h = hub_factory(cfg)
    # token bucket: burst 3, then refused, then one token per second
    codes = [say(h, bearer("acme-key"), text="Bucket.").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429], codes
    r = say(h, bearer("acme-key"))
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-RateLimit-Limit"] and "X-RateLimit-Remaining" in r.headers and "X-RateLimit-Reset" in r.headers
    # one token per second: a refused request takes none, so poll until the next one is there
    assert wait_until(lambda: say(h, bearer("acme-key")).status_code == 200, timeout=5, interval=0.2)
    # sliding window: exactly 4 per minute for beta, independent of acme
    codes = [say(h, bearer("beta-key"), voice="echo").status_code for _ in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429], codes
    ok = say(h, bearer("beta-key"), voice="echo")
    assert ok.status_code == 429 and int(ok.headers["Retry-After"]) <= 60
    # control routes are never counted
    for _ in range(10):
        assert h.get("/health").status_code == 200
        assert h.get("/metrics").status_code == 200


def test_key_rpm(hub_factory):
    cfg = ("auth:\n  mode: api_key\n  keys:\n"
           f"    - {{ id: small, sha256: \"{sha('small-key')}\", tenant: acme, role: user, rpm: 2 }}\n"
           f"    - {{ id: big, sha256: \"{sha('big-key')}\", tenant: acme, role: user }}\n"
           "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n")
    h = hub_factory(cfg)
    codes = [say(h, bearer("small-key")).status_code for _ in range(3)]
    assert codes == [200, 200, 429], codes
    assert say(h, bearer("small-key")).json()["error"]["code"] == "key_rpm"
    assert say(h, bearer("big-key")).status_code == 200   # the same tenant, another key


def test_global_and_ip_rpm_exact(hub_factory):
    h = hub_factory("rate_limit: { global_rpm: 7, ip_rpm: 0, concurrency: 0 }\n")
    codes = [say(h).status_code for _ in range(9)]
    assert codes.count(200) == 7 and codes[7:] == [429, 429], codes
    h2 = hub_factory("rate_limit: { global_rpm: 0, ip_rpm: 5, concurrency: 0 }\n")
    codes = [say(h2).status_code for _ in range(7)]
    assert codes.count(200) == 5 and codes[5:] == [429, 429], codes
    r = say(h2)
    assert r.json()["error"]["code"] == "ip_rpm"


def test_concurrency_slots_come_back(hub_factory):
    f = FakeEngine("openai_fm", latency=1.0).start()
    try:
        cfg = (f"providers:\n  - name: up\n    type: openai_fm\n    base_url: \"{f.url}\"\n    timeout: 5s\n"
               "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 2 }\ncache: { enabled: false }\n"
               "router:\n  breaker: { failures: 100, failure_ratio: 0 }\n")
        h = hub_factory(cfg)
        body = b"input=Slow+one.&voice=alloy&response_format=wav"
        socks = []
        for _ in range(2):  # two requests hold both slots, then their clients go away
            s = socket.create_connection(("127.0.0.1", h.port))
            s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            socks.append(s)
        in_flight = lambda: h.get("/health").json()["requests"]["in_flight"]  # noqa: E731
        assert wait_until(lambda: in_flight() == 2), in_flight()
        r = h.post(data={"input": "Third.", "voice": "alloy"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "concurrency"
        for s in socks:
            s.close()
        assert wait_until(lambda: in_flight() == 0), in_flight()
        assert h.post(data={"input": "Slots are back.", "voice": "alloy", "response_format": "wav"}).status_code == 200
        # upstream errors release slots too
        f.set_fault("status_500")
        for _ in range(2):  # 2 requests x (1 + 1 retry) stays under the breaker's 5 failures
            assert h.post(data={"input": "Failing.", "voice": "alloy"}).status_code == 502
        f.clear_fault()
        assert h.post(data={"input": "Still free.", "voice": "alloy"}).status_code == 200
    finally:
        f.stop()


QUOTA_CFG = """
auth:
  mode: api_key
  keys:
""" + keys_yaml() + """
tenants:
  acme: { quota: { chars_per_day: 30, chars_per_month: 0 } }
  beta: {}
rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }
cache: { enabled: false }
"""


def usage(h):
    r = h.get("/admin/usage?window=day", headers=bearer("root-key"))
    assert r.status_code == 200, r.text
    rows = {u["tenant"]: u for u in r.json()["usage"]}
    return rows.get("acme", {"characters": 0, "requests": 0})


def test_quota_counts_code_points_and_survives_kill9(hub_factory, tmp_path):
    h = Hub(QUOTA_CFG, workdir=str(tmp_path))  # killed with -9 below, so not from the factory
    assert say(h, bearer("acme-key"), voice="zh", text="你好世界").status_code == 200        # 4
    assert say(h, bearer("acme-key"), text="😀😀 ok").status_code == 200                    # 5
    assert say(h, bearer("acme-key"), text="Twenty characters!!!").status_code == 200      # 20 -> 29
    assert usage(h) == {"tenant": "acme", "characters": 29, "requests": 3}
    r = say(h, bearer("acme-key"), text="ab")                                             # 31 > 30
    assert r.status_code == 429 and r.json()["error"]["type"] == "insufficient_quota"
    assert int(r.headers["Retry-After"]) > 0
    assert say(h, bearer("acme-key"), text="a").status_code == 200                          # exactly 30
    # a failed synthesis is refunded: an unknown voice never reserves, and bad input never counts
    assert usage(h)["characters"] == 30
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait()
    h.log.close()
    h2 = Hub(QUOTA_CFG, workdir=str(tmp_path))
    try:
        assert usage(h2)["characters"] == 30
        assert say(h2, bearer("acme-key"), text="a").status_code == 429
    finally:
        h2.check_clean_exit()


def test_quota_gauges_in_metrics(hub_factory):
    h = hub_factory(QUOTA_CFG)
    assert say(h, bearer("acme-key"), text="Twenty characters!!!").status_code == 200
    m = h.get("/metrics").text
    assert 'ttshub_quota_limit_chars{tenant="acme",window="day"} 30\n' in m, m
    assert 'ttshub_quota_used_chars{tenant="acme",window="day"} 20\n' in m, m
    assert 'tenant="beta"' not in m  # no quota, no series
    assert 'window="month"' not in m  # chars_per_month: 0


def fm_cfg(url, extra=""):
    return (f"providers:\n  - name: up\n    type: openai_fm\n    base_url: \"{url}\"\n    timeout: 10s\n"
            "    concurrency: 64\n"
            "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n" + extra)


def test_cache_hit_identical_bytes_without_engine(hub_factory):
    f = FakeEngine("openai_fm").start()
    try:
        h = hub_factory(fm_cfg(f.url))
        a = h.post(data={"input": "Cache me.", "voice": "alloy", "response_format": "wav"})
        assert a.status_code == 200 and a.headers["X-Cache"] == "MISS"
        b = h.post(data={"input": "Cache   me. ", "voice": "alloy", "response_format": "wav"})  # same after normalising
        assert b.status_code == 200 and b.headers["X-Cache"] == "HIT"
        assert f.calls == 1
        assert b.content[44:] == a.content[44:]
        # exact sizes in the WAV header of a hit
        assert int.from_bytes(b.content[40:44], "little") == len(b.content) - 44
        assert int(b.headers["Content-Length"]) == len(b.content)
        # a different voice, format or speed is a different entry
        assert h.post(data={"input": "Cache me.", "voice": "alloy", "response_format": "mp3"}).headers["X-Cache"] == "MISS"
        assert h.post(data={"input": "Cache me.", "voice": "alloy", "response_format": "wav",
                            "speed": "1.5"}).headers["X-Cache"] == "MISS"
        # a repeated generation within the TTL is idempotent
        g = "3f1c2c1e-7d5b-4a44-9a53-1b2f7b3c9d10"
        x = h.post(data={"input": "Idempotent.", "voice": "alloy", "generation": g})
        y = h.post(data={"input": "Idempotent.", "voice": "alloy", "generation": g})
        assert y.headers["X-Cache"] == "HIT" and x.content == y.content and y.headers["X-Request-Id"] == g
        # a failed synthesis is never cached
        f.set_fault("status_500", count=2)
        assert h.post(data={"input": "Not cached.", "voice": "alloy"}).status_code == 502
        calls = f.calls
        r = h.post(data={"input": "Not cached.", "voice": "alloy"})
        assert r.status_code == 200 and r.headers["X-Cache"] == "MISS" and f.calls == calls + 1
    finally:
        f.stop()


def test_fifty_concurrent_identical_requests_one_engine_call(hub_factory):
    f = FakeEngine("openai_fm", latency=1.0).start()
    try:
        h = hub_factory(fm_cfg(f.url))
        out = [None] * 50
        barrier = threading.Barrier(50)

        def one(i):
            barrier.wait()
            r = requests.post(h.url + "/api/generate", timeout=60,
                              data={"input": "Fifty at once.", "voice": "alloy", "response_format": "mp3"})
            out[i] = (r.status_code, r.headers.get("X-Cache"), r.content)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert f.calls == 1
        assert all(o[0] == 200 for o in out)
        assert len({o[2] for o in out}) == 1
        kinds = [o[1] for o in out]
        assert kinds.count("MISS") == 1 and kinds.count("COALESCED") + kinds.count("HIT") == 49
    finally:
        f.stop()


# ---- scale-out: three hubs on one real redis-server ----

def cluster_cfg(redis_port, fake_url, extra="", on_error="open"):
    return (f"providers:\n  - name: up\n    type: openai_fm\n    base_url: \"{fake_url}\"\n    timeout: 10s\n"
            f"redis: {{ url: \"redis://127.0.0.1:{redis_port}/0\", prefix: \"t{redis_port}:\", timeout: 300ms }}\n"
            f"cache: {{ enabled: true, backend: redis }}\n" + extra.replace("@ONERR@", on_error))


def redis_idle(h):
    """Nothing of this hub waits for the loop turn's script (stores wait for it, up to 2 ms) and no Redis
    command is waiting for its answer (both lanes)."""
    text = h.get("/metrics").text.splitlines()
    lines = [ln for ln in text if ln.startswith("ttshub_redis_in_flight{") or ln.startswith("ttshub_redis_queued ")]
    return len(lines) >= 3 and all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in lines)


def redis_connected(h):
    return h.get("/health").json()["components"]["redis"]["connected"] is True


def test_scale_out_shared_limits_quota_cache(hub_factory, redis_server):
    f = FakeEngine("openai_fm").start()
    try:
        extra = ("rate_limit: { global_rpm: 60, ip_rpm: 0, concurrency: 0, backend: redis, on_backend_error: @ONERR@ }\n"
                 "auth:\n  mode: api_key\n  keys:\n" + keys_yaml() +
                 "tenants:\n  acme: { quota: { chars_per_day: 1000000 } }\n  beta: { quota: { chars_per_day: 12 } }\n")
        hubs = [hub_factory(cluster_cfg(redis_server.port, f.url, extra)) for _ in range(3)]
        assert all(wait_until(lambda: redis_connected(h)) for h in hubs)
        # a global RPM shared by the three: exactly 60 of 90 pass
        codes = []
        for i in range(90):
            r = say(hubs[i % 3], bearer("acme-key"), text=f"Request {i}.")
            codes.append(r.status_code)
        assert codes.count(200) == 60, codes
        assert codes.count(429) == 30
        for h in hubs:
            h.stop(signal.SIGTERM)
            h.log.close()
        # fresh hubs (the global window is used up) for quota and cache
        extra2 = extra.replace("global_rpm: 60", "global_rpm: 0")
        hubs = [hub_factory(cluster_cfg(redis_server.port, f.url, extra2)) for _ in range(3)]
        assert all(wait_until(lambda: redis_connected(h)) for h in hubs)
        # a quota shared across hubs: 12 characters for beta in all
        assert say(hubs[0], bearer("beta-key"), voice="echo", text="abcde").status_code == 200
        assert say(hubs[1], bearer("beta-key"), voice="echo", text="fghij").status_code == 200
        assert say(hubs[2], bearer("beta-key"), voice="echo", text="klm").status_code == 429
        assert say(hubs[2], bearer("beta-key"), voice="echo", text="kl").status_code == 200
        # audio made at hub A is a cache hit at hub B
        calls = f.calls
        a = say(hubs[0], bearer("acme-key"), text="Shared cache.")
        # hub A stores the audio right after the response ends: wait until Redis has answered that write
        assert wait_until(lambda: redis_idle(hubs[0]))
        b = say(hubs[1], bearer("acme-key"), text="Shared cache.")
        assert a.headers["X-Cache"] == "MISS" and b.headers["X-Cache"] == "HIT"
        assert f.calls == calls + 1 and b.content[44:] == a.content[44:]
    finally:
        f.stop()


def redis_exists(port, key):
    """EXISTS key, over a plain socket (the tests need no Redis library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        k = key.encode()
        c.sendall(b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(k), k))
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += c.recv(64)
        return int(buf[1:-2])


def test_concurrency_shared_across_hubs_exact(hub_factory, redis_server):
    """A global concurrency of 3 over two hubs: of ten requests at once exactly three run, and the slots come
    back to the other hub once they end (the counts in Redis go to nothing)."""
    f = FakeEngine("openai_fm", latency=2.0).start()
    try:
        cfg = (f"providers:\n  - name: up\n    type: openai_fm\n    base_url: \"{f.url}\"\n    timeout: 10s\n"
               f"redis: {{ url: \"redis://127.0.0.1:{redis_server.port}/0\", prefix: \"c{redis_server.port}:\" }}\n"
               "cache: { enabled: false }\n"
               "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 3, backend: redis, on_backend_error: closed }\n")
        hubs = [hub_factory(cfg) for _ in range(2)]
        assert all(wait_until(lambda: redis_connected(h)) for h in hubs)
        gate = threading.Barrier(10)
        out = {}

        def one(i):
            gate.wait(10)
            r = requests.post(hubs[i % 2].url + "/api/generate", timeout=30,
                              data={"input": f"Held request {i}.", "voice": "alloy", "response_format": "wav"})
            out[i] = (r.status_code, r.json()["error"]["code"] if r.status_code != 200 else "")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = [out[i] for i in range(10)]
        assert [c for c, _ in codes].count(200) == 3, codes
        assert sorted(e for c, e in codes if c != 200) == ["concurrency"] * 7, codes
        # every slot was given back, wherever it was taken: the counts' hash is gone
        assert wait_until(lambda: all(redis_idle(h) for h in hubs))
        assert wait_until(lambda: redis_exists(redis_server.port, f"c{redis_server.port}:rl:h:g") == 0)
        for i in range(3):
            assert say(hubs[i % 2], text=f"Afterwards {i}.").status_code == 200
    finally:
        f.stop()


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_redis_restart_in_the_middle(hub_factory, redis_server, on_error):
    f = FakeEngine("openai_fm").start()
    try:
        extra = "rate_limit: { global_rpm: 100000, ip_rpm: 0, concurrency: 0, backend: redis, on_backend_error: @ONERR@ }\n"
        h = hub_factory(cluster_cfg(redis_server.port, f.url, extra, on_error))
        assert wait_until(lambda: redis_connected(h))
        assert say(h).status_code == 200
        assert h.get("/health").json()["components"]["redis"]["connected"] is True
        redis_server.stop()
        assert wait_until(lambda: not redis_connected(h))
        r = say(h, text="While Redis is down.")
        if on_error == "open":
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        health = h.get("/health")
        assert health.json()["components"]["redis"]["connected"] is False
        assert health.json()["status"] == "degraded" and health.status_code == 200
        redis_server.start()
        assert wait_until(lambda: redis_connected(h), timeout=15)
        assert say(h, text="Redis is back.").status_code == 200
    finally:
        f.stop()
