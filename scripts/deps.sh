#!/usr/bin/env bash
# Installs the Debian packages ttshub needs to build, run and test.
# Only packages that are missing are installed; nothing else is fetched.
set -euo pipefail
mode=${1:-build}   # build | test
pkgs=(build-essential cmake pkg-config clang
  libuv1-dev libhttp-parser-dev libcurl4-openssl-dev libwslay-dev libhiredis-dev
  libyaml-dev libjansson-dev libssl-dev
  libavformat-dev libavcodec-dev libswresample-dev libavfilter-dev libavutil-dev
  libespeak-ng-dev espeak-ng-data libmsgpack-dev)
if [ "$mode" = test ]; then
  pkgs+=(ffmpeg espeak-ng python3 python3-pytest python3-pytest-xdist python3-requests python3-websockets
    libclang-rt-14-dev redis-server nginx-light wrk time procps chromium)
  # the browser tests run on Node.js (playwright-core from npm drives Debian's chromium)
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# wait for another apt/dpkg run (a parallel install) instead of failing on its lock
lock=(-o DPkg::Lock::Timeout=900)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}"
