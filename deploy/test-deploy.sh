#!/usr/bin/env bash
# make test-deploy: builds the package and the images and runs tests/deploy, overlapping what can overlap
# (the package build with the image build; the package's install test with the image builds; the image and
# the compose tests with each other), and prints how long each phase took. Every test cleans up after
# itself; this script also removes what a killed test left (containers named ttshub-*, projects ttshubt*).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
IMAGE=${IMAGE:-localhost/ttshub:latest}
logs=$(mktemp -d /tmp/ttshub-test-deploy.XXXXXX)
t0=$(date +%s)
say() { printf '[test-deploy %4ss] %s\n' $(($(date +%s) - t0)) "$*"; }
pytest() { $PY -m pytest -q -p no:cacheprovider "$@" ${PYTEST_ARGS:-}; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for c in $(podman ps -a --format '{{.Names}}' | grep -E '^(ttshub-(deb|img|drain)-[0-9a-f]{8}|ttshubt[0-9a-f]{8}_)'); do
    podman rm -f -t 0 -v "$c" >/dev/null 2>&1
  done
  for v in $(podman volume ls --format '{{.Name}}' | grep -E '^ttshubt[0-9a-f]{8}_'); do podman volume rm -f "$v" >/dev/null 2>&1; done
  for n in $(podman network ls --format '{{.Name}}' | grep -E '^ttshubt[0-9a-f]{8}_'); do podman network rm -f "$n" >/dev/null 2>&1; done
}
trap cleanup EXIT
# untagged images of earlier builds (superseded stages), once they are a day old
podman image prune -f --filter until=24h >/dev/null 2>&1
trap 'exit 130' INT TERM
fail=0
finish() { # name pid: waits for a background phase and reports it
  if wait "$2"; then say "$1: ok"; else say "$1: FAILED (log below)"; cat "$logs/$1.log"; fail=1; fi
}

say "deployment tools"
bash scripts/deploy-deps.sh deploy || exit 1
bash scripts/deps.sh test || exit 1

say "package (make deb) while the Debian base image is made"
bash deploy/build-deb.sh >"$logs/deb.log" 2>&1 &
deb=$!
pids+=("$deb")
bash deploy/base-image.sh || exit 1

say "image (make image) and the helper images (Redis, HAProxy)"
podman build --format docker -f deploy/Containerfile -t "$IMAGE" . >"$logs/image.log" 2>&1 &
img=$!
pids+=("$img")
bash deploy/build-images.sh >"$logs/helpers.log" 2>&1 &
helpers=$!
pids+=("$helpers")

say "Prometheus rules and Kubernetes manifests"
pytest tests/deploy/test_prometheus.py tests/deploy/test_k8s.py || fail=1

finish deb "$deb"
say "package tests (lintian, contents, install in a fresh container) while the images build"
pytest tests/deploy/test_package.py >"$logs/package.log" 2>&1 &
pkg=$!
pids+=("$pkg")

finish helpers "$helpers"
finish image "$img"

if [ $fail -eq 0 ]; then
  say "image and compose cluster tests, side by side"
  pytest tests/deploy/test_image.py >"$logs/image-tests.log" 2>&1 &
  it=$!
  pids+=("$it")
  pytest tests/deploy/test_compose.py >"$logs/compose.log" 2>&1 &
  ct=$!
  pids+=("$ct")
  finish image-tests "$it"
  finish compose "$ct"
fi
finish package "$pkg"
for f in package image-tests compose; do
  [ -f "$logs/$f.log" ] && say "$f: $(tail -n 1 "$logs/$f.log")"
done
say "done: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
rm -rf "$logs"
exit $fail
