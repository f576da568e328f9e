"""deploy/prometheus: promtool checks the scrape config and the rules and runs their unit tests, and every
metric the rules use is one a real hub exposes on /metrics."""
import os
import re
import subprocess
import tempfile
import time

import requests

from conftest import ROOT, free_port, need, wait_until

PROM = os.path.join(ROOT, "deploy", "prometheus")
BIN = os.environ.get("TTSHUB_BIN", os.path.join(ROOT, "build", "ttshub"))


def promtool(*args):
    need("promtool")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROM)


def test_check_config():
    p = promtool("check", "config", "prometheus.yml")
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_rules():
    p = promtool("check", "rules", "rules/ttshub.rules.yml")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 9 rules found" in p.stdout + p.stderr


def test_rule_unit_tests():
    p = promtool("test", "rules", "tests/ttshub.test.yml")
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_every_alert_has_a_unit_test():
    rules = open(os.path.join(PROM, "rules", "ttshub.rules.yml")).read()
    tests = open(os.path.join(PROM, "tests", "ttshub.test.yml")).read()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) == 9
    for a in alerts:
        assert re.search(rf"alertname: {a}\n\s+exp_alerts:\n\s+- exp_labels", tests), f"{a}: no firing test"


HUB_CFG = """
data_dir: "{data}"
metrics_listen: "127.0.0.1:{mport}"
redis: {{ url: "redis://127.0.0.1:{rport}/0", timeout: 100ms }}
cache: {{ backend: redis }}
tenants:
  acme: {{ quota: {{ chars_per_day: 1000, chars_per_month: 20000 }} }}
providers:
  - {{ name: local, type: espeak }}
  - {{ name: workers, type: nodes, engine: espeak }}
"""


def test_rules_use_metrics_the_hub_exposes(tmp_path):
    """A hub with a provider, a nodes pool, a tenant quota and a Redis backend (down, which is fine)."""
    port, mport = free_port(), free_port()
    cfg = tmp_path / "ttshub.yaml"
    cfg.write_text(HUB_CFG.format(data=tmp_path / "data", mport=mport, rport=free_port()))
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([BIN, "serve", "-c", str(cfg), "--listen", f"127.0.0.1:{port}"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until("the hub", lambda: requests.get(url + "/health", timeout=2).status_code in (200, 503), 30)
        r = requests.post(url + "/api/generate", data={"input": "Metrics.", "voice": "alloy"}, timeout=30)
        assert r.status_code == 200, r.text
        exposed = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=10).text
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", exposed, re.M))
    families = {n for n, _ in names}
    histograms = {n for n, t in names if t == "histogram"}
    rules = open(os.path.join(PROM, "rules", "ttshub.rules.yml")).read()
    used = set(re.findall(r"\b(ttshub_\w+)", rules))
    assert used, rules
    for m in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        ok = m in families or (base in histograms and base != m)
        assert ok, f"{m} is used by the rules but {BIN} does not expose it:\n{exposed}"
    # the labels the rules group by
    assert re.search(r'^ttshub_provider_breaker_state\{provider="local"\} ', exposed, re.M)
    assert re.search(r'^ttshub_requests_total\{route="/api/generate",status="200"\} ', exposed, re.M)
    assert re.search(r'^ttshub_request_duration_seconds_bucket\{route="/api/generate",le="10"\} ', exposed,
                     re.M)
    assert 'ttshub_quota_used_chars{tenant="acme",window="day"} 0\n' in exposed  # auth none: no tenant
    assert 'ttshub_nodes{state="not_routable"} 0\n' in exposed
    assert "ttshub_redis_connected 0\n" in exposed
