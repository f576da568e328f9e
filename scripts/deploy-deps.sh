#!/usr/bin/env bash
# Installs what `make deb` and `make test-deploy` need (Debian packages only, and only the missing ones),
# and makes podman usable on these machines: runc as the OCI runtime, and default ulimits the machine's own
# hard limits allow. The containers.conf edit is idempotent and keeps an existing config: it adds only the keys
# that are not set, inside a marked block.
#   scripts/deploy-deps.sh deb      packaging tools (debhelper, lintian)
#   scripts/deploy-deps.sh deploy   the above plus podman, buildah, mmdebstrap, debootstrap, runc, podman-compose, promtool
set -euo pipefail
mode=${1:-deploy}
pkgs=(debhelper devscripts lintian dpkg-dev fakeroot)
if [ "$mode" = deploy ]; then
  pkgs+=(podman buildah mmdebstrap debootstrap runc podman-compose prometheus slirp4netns uidmap fuse-overlayfs
    iptables containernetworking-plugins golang-github-containernetworking-plugin-dnsname yamllint python3-yaml python3-requests python3-pytest ffmpeg)
fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
if [ ${#missing[@]} -gt 0 ]; then
  echo "deploy-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}"
  # the prometheus package starts a server as a service; the tests need only promtool
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
[ "$mode" = deploy ] || exit 0

# containers.conf: runc (crun refuses the hybrid cgroup layout) and ulimits within the hard limits
conf=/etc/containers/containers.conf
$SUDO mkdir -p /etc/containers
[ -f "$conf" ] || $SUDO touch "$conf"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
has_key() { # section key: is key set (uncommented) in [section] of the file?
  awk -v s="[$1]" -v k="$2" '
    /^[[:space:]]*\[/ { cur=$1 }
    cur==s && $0 ~ "^[[:space:]]*"k"[[:space:]]*=" { found=1 }
    END { exit !found }' "$conf"
}
add_key() { # section line: append the line to [section], adding the section if it is missing
  local sect=$1 line=$2 tmp
  tmp=$(mktemp)
  if grep -q "^[[:space:]]*\[$sect\]" "$conf"; then
    awk -v s="[$sect]" -v l="$line" '
      { print } $1==s && !done { print l " # added by ttshub scripts/deploy-deps.sh"; done=1 }' "$conf" >"$tmp"
  else
    cat "$conf" >"$tmp"
    printf '\n[%s]\n%s # added by ttshub scripts/deploy-deps.sh\n' "$sect" "$line" >>"$tmp"
  fi
  $SUDO cp "$tmp" "$conf"
  rm -f "$tmp"
}
has_key engine runtime || add_key engine 'runtime = "runc"'
has_key containers default_ulimits ||
  add_key containers "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
exit 0
