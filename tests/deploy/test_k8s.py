"""deploy/k8s: parsed and cross-checked offline. No cluster is reachable here, so what is checked is that the
manifests are well-formed, that kustomize renders them (when kubectl is on PATH), and that names, ports,
paths and env vars agree with each other, with the hub configuration (checked by `ttshub check`) and with
the image. Schema validation against a live API server is not done."""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

K8S = os.path.join(ROOT, "deploy", "k8s")
BIN = os.environ.get("TTSHUB_BIN", os.path.join(ROOT, "build", "ttshub"))


def load(name):
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def resources():
    kust = load("kustomization.yaml")[0]
    docs = []
    for r in kust["resources"]:
        docs += load(r)
    return kust, docs


def find(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind} {name}")


def hub_config(docs):
    return yaml.safe_load(find(docs, "ConfigMap", "ttshub-config")["data"]["ttshub.yaml"])


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def container(dep):
    cs = dep["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1
    return cs[0]


def named_ports(c):
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def env_names(c):
    return {e["name"]: e for e in c.get("env", [])}


def test_every_file_parses_and_is_listed():
    kust, docs = resources()
    files = sorted(f for f in os.listdir(K8S) if f.endswith(".yaml"))
    listed = set(kust["resources"]) | {"kustomization.yaml", "secret.example.yaml"}
    assert set(files) == listed, files
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "StatefulSet", "Service", "Deployment", "Service",
                            "PodDisruptionBudget", "Deployment"]), kinds


def test_kustomize_renders():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian's kubernetes-client conflicts with other kubectl builds)")
    p = subprocess.run(["kubectl", "kustomize", K8S], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rendered = [d for d in yaml.safe_load_all(p.stdout) if d]
    assert len(rendered) == 8
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "ttshub", d["metadata"]


def test_shipped_configs_pass_ttshub_check(tmp_path):
    """The ConfigMap's file, and the package, image and compose configs, against the real config reference."""
    _, docs = resources()
    files = {"k8s.yaml": find(docs, "ConfigMap", "ttshub-config")["data"]["ttshub.yaml"]}
    for rel in ("deploy/package/ttshub.yaml", "deploy/container/ttshub.yaml", "deploy/compose/ttshub.yaml",
                "deploy/compose-test/ttshub.yaml"):
        files[rel.replace("/", "_")] = open(os.path.join(ROOT, rel)).read()
    for name, text in files.items():
        f = tmp_path / name
        f.write_text(text)
        p = subprocess.run([BIN, "check", "-c", str(f)], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, TTSHUB_CLUSTER_TOKEN="x"))
        assert p.returncode == 0, f"{name}: {p.stdout}{p.stderr}"


def test_hub_deployment_agrees_with_config():
    _, docs = resources()
    cfg = hub_config(docs)
    dep = find(docs, "Deployment", "ttshub")
    c = container(dep)
    ports = named_ports(c)
    assert ports == {"http": port_of(cfg["listen"]), "metrics": port_of(cfg["metrics_listen"])}
    # the ConfigMap as a directory (a subPath mount never sees updates, so the file watch would not either)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/ttshub" and "subPath" not in mounts["config"]
    assert vols["config"]["configMap"]["name"] == "ttshub-config"
    assert c["args"] == ["serve", "-c", "/etc/ttshub/ttshub.yaml"]
    assert "ttshub.yaml" in find(docs, "ConfigMap", "ttshub-config")["data"]
    assert mounts["data"]["mountPath"] == cfg["data_dir"]
    # probes on /health, on ports the container declares
    for probe in ("readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        assert g["path"] == "/health" and g["port"] in ports, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # drains within the grace period
    grace = int(re.match(r"(\d+)s$", cfg["limits"]["shutdown_grace"]).group(1))
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5
    # the selector selects the template; the Service and the PDB select the hubs
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = find(docs, "Service", "ttshub")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    pdb = find(docs, "PodDisruptionBudget", "ttshub")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def secret_keys():
    s = load("secret.example.yaml")[0]
    return s["metadata"]["name"], set(s["stringData"])


def test_env_vars_come_from_the_secret():
    _, docs = resources()
    cfg = hub_config(docs)
    sname, skeys = secret_keys()
    c = container(find(docs, "Deployment", "ttshub"))
    env = env_names(c)
    # every variable the config names (token_env, *_env) is set, from the Secret
    wanted = {cfg["registry"]["token_env"]}
    for p in cfg.get("providers", []):
        if p.get("api_key_env"):
            wanted.add(p["api_key_env"])
    for name in wanted:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == sname and ref["key"] in skeys, name
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == sname and ref["key"] in skeys, e
    w = env_names(container(find(docs, "Deployment", "ttshub-worker")))
    tok = w[cfg["registry"]["token_env"]]["valueFrom"]["secretKeyRef"]
    assert tok == env[cfg["registry"]["token_env"]]["valueFrom"]["secretKeyRef"]


def test_redis_and_workers_point_at_the_services():
    _, docs = resources()
    cfg = hub_config(docs)
    m = re.match(r"redis://([^:/]+):(\d+)/\d+$", cfg["redis"]["url"])
    assert m, cfg["redis"]["url"]
    rsvc = find(docs, "Service", m.group(1))
    assert int(m.group(2)) in [p["port"] for p in rsvc["spec"]["ports"]]
    for b in ("rate_limit", "cache", "registry"):
        assert cfg[b]["backend"] == "redis", b
    rset = find(docs, "StatefulSet", "ttshub-redis")
    assert rsvc["spec"]["selector"].items() <= rset["spec"]["template"]["metadata"]["labels"].items()
    w = container(find(docs, "Deployment", "ttshub-worker"))
    args = w["args"]
    opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert args[0] == "worker"
    g = re.match(r"http://([^:/]+):(\d+)$", opt["--gateway"])
    hsvc = find(docs, "Service", g.group(1))
    assert int(g.group(2)) in [p["port"] for p in hsvc["spec"]["ports"] if p["name"] == "http"]
    node_port = named_ports(w)["node"]
    assert port_of(opt["--listen"]) == node_port
    assert opt["--advertise"] == f"http://$(POD_IP):{node_port}"
    assert {"POD_IP", "POD_NAME"} <= set(env_names(w))
    # the nodes provider routes to the engine the workers register
    nodes = [p for p in cfg["providers"] if p["type"] == "nodes"]
    assert nodes and nodes[0]["engine"] == opt["--engine"]


def test_images_and_users_match_the_containerfiles():
    _, docs = resources()
    cf = open(os.path.join(ROOT, "deploy", "Containerfile")).read()
    uid = re.search(r"^USER (\d+):(\d+)$", cf, re.M)
    assert uid
    for name in ("ttshub", "ttshub-worker"):
        dep = find(docs, "Deployment", name)
        sc = dep["spec"]["template"]["spec"]["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == int(uid.group(1)) and sc["fsGroup"] == int(uid.group(2))
        assert container(dep)["image"].startswith("localhost/ttshub:")
    assert "EXPOSE 8080 9090" in cf
    assert container(find(docs, "StatefulSet", "ttshub-redis"))["image"].startswith("localhost/ttshub-redis:")
