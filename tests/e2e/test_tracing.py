"""OTLP traces: the hub exports spans over OTLP/HTTP JSON to a collector (a fake one here, checking the
payload as an OpenTelemetry collector would parse it), and passes W3C trace context on to the engines."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port, wait_until
from fakes.engines import FakeEngine

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Collector:
    """POST /v1/traces with an OTLP JSON ExportTraceServiceRequest; keeps every span with its resource."""

    def __init__(self, status=200):
        self.spans = []
        self.posts = 0
        self.status = status
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/json"
                if ok:
                    doc = json.loads(body)
                    with outer.lock:
                        outer.posts += 1
                        for rs in doc["resourceSpans"]:
                            res = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                            for ss in rs["scopeSpans"]:
                                for sp in ss["spans"]:
                                    outer.spans.append((res, ss["scope"], sp))
                self.send_response(outer.status if ok else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, pred, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                found = [s for s in self.spans if pred(s[2])]
            if found:
                return found
            time.sleep(0.05)
        return []

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.stop()


def attrs(span):
    out = {}
    for a in span["attributes"]:
        v = a["value"]
        out[a["key"]] = v.get("stringValue", v.get("intValue"))
    return out


def cfg(collector_url, fake_url, ratio="1.0"):
    return ("providers:\n"
            f"  - {{ name: fm, type: openai_fm, base_url: \"{fake_url}\", timeout: 5s }}\n"
            "cache: { enabled: false }\n"
            f"tracing: {{ otlp_endpoint: \"{collector_url}\", service_name: ttshub-test, sample_ratio: {ratio} }}\n")


def test_request_and_provider_spans(hub_factory, collector):
    f = FakeEngine("openai_fm").start()
    try:
        h = hub_factory(cfg(collector.url, f.url))
        r = h.post(data={"input": "trace me", "voice": "alloy", "response_format": "mp3"})
        assert r.status_code == 200
        rid = r.headers["X-Request-Id"]
        server = collector.wait(lambda s: s["kind"] == 2 and attrs(s).get("ttshub.request_id") == rid)
        assert len(server) == 1
        res, scope, root = server[0]
        assert res["service.name"] == {"stringValue": "ttshub-test"} and scope["name"] == "ttshub"
        assert root["name"] == "POST /api/generate"
        assert HEX32.match(root["traceId"]) and HEX16.match(root["spanId"]) and "parentSpanId" not in root
        a = attrs(root)
        assert a["http.response.status_code"] == "200" and a["http.route"] == "/api/generate"
        assert a["ttshub.provider"] == "fm" and a["ttshub.voice"] == "alloy" and a["ttshub.format"] == "mp3"
        assert a["ttshub.characters"] == "8"
        assert int(root["endTimeUnixNano"]) >= int(root["startTimeUnixNano"]) > 1.6e18
        assert root["status"]["code"] == 0
        child = collector.wait(lambda s: s["kind"] == 3 and s.get("parentSpanId") == root["spanId"])
        assert len(child) == 1
        c = child[0][2]
        assert c["traceId"] == root["traceId"] and c["name"] == "synthesize fm"
        assert attrs(c)["ttshub.provider.type"] == "openai_fm"
        # the engine got the attempt's context
        tp = [hdrs.get("traceparent") for _, _, hdrs, _ in f.requests]
        assert tp[-1] == f"00-{root['traceId']}-{c['spanId']}-01"
    finally:
        f.stop()


def test_client_trace_context_is_continued(hub_factory, collector):
    f = FakeEngine("openai_fm").start()
    try:
        h = hub_factory(cfg(collector.url, f.url, ratio="0"))
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        r = h.post(data={"input": "from a traced client", "voice": "alloy"},
                   headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert r.status_code == 200
        root = collector.wait(lambda s: s["kind"] == 2 and s["traceId"] == trace_id)
        assert root and root[0][2]["parentSpanId"] == parent
        # sample_ratio 0 and no sampled parent: nothing is exported
        r = h.post(data={"input": "not traced", "voice": "alloy"})
        r2 = h.post(data={"input": "not sampled", "voice": "alloy"},
                    headers={"traceparent": f"00-{trace_id[:-1]}f-{parent}-00"})
        assert r.status_code == 200 and r2.status_code == 200
        # the unsampled context still reaches the engine only when sampled: no header was invented
        assert f.requests[-1][2].get("traceparent") is None
        # a later sampled request is exported; spans leave in order, so anything from the two above would be there
        later = "5bf92f3577b34da6a3ce929d0e0e4737"
        assert h.post(data={"input": "sampled again", "voice": "alloy"},
                      headers={"traceparent": f"00-{later}-{parent}-01"}).status_code == 200
        assert collector.wait(lambda s: s["kind"] == 2 and s["traceId"] == later)
        with collector.lock:
            ids = {s[2]["traceId"] for s in collector.spans}
        assert ids == {trace_id, later}
        # malformed headers are ignored (a new trace would start if sampled)
        for bad in ("garbage", "00-" + "0" * 32 + f"-{parent}-01", f"00-{trace_id.upper()}-{parent}-01",
                    f"ff-{trace_id}-{parent}-01", f"00-{trace_id}-{parent}-01-extra"):
            assert h.post(data={"input": "bad header", "voice": "alloy"},
                          headers={"traceparent": bad}).status_code == 200
    finally:
        f.stop()


def test_failures_are_error_spans_and_collector_outage_is_harmless(hub_factory, collector):
    f = FakeEngine("openai_fm").start()
    try:
        h = hub_factory(cfg(collector.url, f.url))
        f.set_fault("status_500")
        r = h.post(data={"input": "this one fails", "voice": "alloy"})
        assert r.status_code == 502
        rid = r.headers["X-Request-Id"]
        root = collector.wait(lambda s: s["kind"] == 2 and attrs(s).get("ttshub.request_id") == rid)
        assert root and root[0][2]["status"]["code"] == 2
        assert attrs(root[0][2])["error.type"] == "upstream_error"
        kids = collector.wait(lambda s: s["kind"] == 3 and s.get("parentSpanId") == root[0][2]["spanId"]
                              and s["status"]["code"] == 2)
        assert kids and "500" in kids[0][2]["status"]["message"]
        assert attrs(kids[0][2])["http.response.status_code"] == "500"
        f.clear_fault()
        # the collector goes away: requests go on, nothing breaks
        collector.stop()
        for i in range(5):
            assert h.post(data={"input": f"collector down {i}", "voice": "alloy"}).status_code == 200
        # the failed export is logged, and the hub goes on serving
        assert wait_until(lambda: "tracing: cannot export" in h.output())
        assert h.get("/health").status_code == 200
        assert h.post(data={"input": "after the failed export", "voice": "alloy"}).status_code == 200
    finally:
        f.stop()
