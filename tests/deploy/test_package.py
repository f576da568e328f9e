"""The Debian package: lintian, and a fresh container from the base image where the .deb is installed with
apt (its Depends pull the runtime libraries), the unit's ExecStartPre and ExecStart run as the ttshub
user, and the hub speaks through the published port."""
import glob
import os
import subprocess

import pytest
import requests

from audio import decoded_seconds, probe
from conftest import BASE, CACHE, ROOT, free_port, need, need_image, podman, unique, wait_until


def deb_path():
    debs = sorted(glob.glob(os.path.join(ROOT, "build-deb", "ttshub_*_*.deb")))
    if not debs:
        pytest.fail("no build-deb/ttshub_*.deb: run `make deb` first")
    return debs[-1]


def test_lintian_clean():
    need("lintian")
    p = subprocess.run(["lintian", "--fail-on", "warning", deb_path()], capture_output=True, text=True,
                       timeout=300)
    bad = [line for line in p.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert p.returncode == 0 and not bad, p.stdout + p.stderr


def test_package_contents():
    out = subprocess.run(["dpkg-deb", "-c", deb_path()], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1] for line in out.splitlines()}
    for want in ("./usr/bin/ttshub", "./lib/systemd/system/ttshub.service",
                 "./lib/systemd/system/ttshub@.service", "./etc/ttshub/ttshub.yaml", "./var/lib/ttshub/"):
        assert want in paths, out
    ctl = subprocess.run(["dpkg-deb", "-f", deb_path(), "Depends"], capture_output=True, text=True,
                         check=True).stdout
    # shlibdeps found the runtime libraries
    for lib in ("libavcodec", "libuv1", "libespeak-ng1", "libhiredis", "libcurl4", "adduser"):
        assert lib in ctl, ctl
    conf = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb_path()], capture_output=True, check=True).stdout
    assert b"/etc/ttshub/ttshub.yaml" in conf  # a conffile


# What the container does: install with apt, show the result, then run the unit's own lines as ttshub.
# The conffile is edited as an operator would to serve beyond loopback (the port is published).
SCRIPT = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-unsafe-io /tmp/ttshub.deb >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
getent passwd ttshub
stat -c 'state %U:%G %a' /var/lib/ttshub
dpkg-query -W -f='conffiles ${Conffiles}\n' ttshub
sed -i 's/^listen: .*/listen: "0.0.0.0:8080"/' /etc/ttshub/ttshub.yaml
unit=/lib/systemd/system/ttshub.service
pre=$(sed -n 's/^ExecStartPre=//p' $unit | head -n1)
start=$(sed -n 's/^ExecStart=//p' $unit | head -n1)
user=$(sed -n 's/^User=//p' $unit)
wd=$(sed -n 's/^WorkingDirectory=//p' $unit)
echo "unit user=$user start=$start"
cd "$wd"
[ -z "$pre" ] || setpriv --reuid="$user" --regid="$user" --init-groups $pre
echo "ttshub starting"
exec setpriv --reuid="$user" --regid="$user" --init-groups $start
"""


def test_deb_installs_and_speaks(containers, tmp_path):
    need("podman")
    need_image(BASE)
    os.makedirs(os.path.join(CACHE, "apt-archives"), exist_ok=True)
    os.makedirs(os.path.join(CACHE, "apt-lists"), exist_ok=True)
    port = free_port()
    name = unique("ttshub-deb")
    containers.run(name, "-p", f"127.0.0.1:{port}:8080",
                   "-v", f"{deb_path()}:/tmp/ttshub.deb:ro",
                   "-v", f"{CACHE}/apt-archives:/var/cache/apt/archives",
                   "-v", f"{CACHE}/apt-lists:/var/lib/apt/lists",
                   image=BASE, cmd=("bash", "-c", SCRIPT))

    def started():
        st = podman("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
        if st != "true":
            raise AssertionError("the container stopped:\n" + containers.logs(name))
        return "ttshub starting" in containers.logs(name)

    wait_until("apt-get install of the .deb", started, timeout=300, interval=1)
    url = f"http://127.0.0.1:{port}"
    wait_until("the packaged hub's /health", lambda: requests.get(url + "/health", timeout=5).ok, timeout=60)
    logs = containers.logs(name)
    assert "ttshub:x:" in logs  # the system user
    assert "state ttshub:ttshub 750" in logs
    assert "/etc/ttshub/ttshub.yaml" in logs.split("conffiles", 1)[1].splitlines()[0]
    assert "start=/usr/bin/ttshub serve -c /etc/ttshub/ttshub.yaml" in logs
    r = requests.post(url + "/api/generate", data={"input": "Installed from the Debian package.", "voice": "alloy",
                                                   "response_format": "mp3"}, timeout=60)
    assert r.status_code == 200, r.text
    assert probe(r.content, "mp3")[0]["codec_name"] == "mp3"
    assert decoded_seconds(r.content, "mp3") > 1.0
    # the serving process runs as ttshub
    top = podman("top", name, "user", "comm").stdout
    assert any(line.split()[:2] == ["ttshub", "ttshub"] for line in top.splitlines()[1:]), top
