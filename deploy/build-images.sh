#!/usr/bin/env bash
# Builds the compose cluster's helper images (Redis, HAProxy) from the same Debian base as the ttshub image,
# and the test overlay's engine that can clone (deploy/compose.test.yaml; a fake, for the tests only).
# (podman-compose would build them on first `up` as well; make test-deploy builds them ahead.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/base-image.sh
podman build -q --format docker -f deploy/redis/Containerfile -t localhost/ttshub-redis:latest . >/dev/null
podman build -q --format docker -f deploy/haproxy/Containerfile -t localhost/ttshub-lb:latest . >/dev/null
podman build -q --format docker -f deploy/fake-engine/Containerfile -t localhost/ttshub-fake-engine:latest . >/dev/null
echo "built localhost/ttshub-redis:latest localhost/ttshub-lb:latest localhost/ttshub-fake-engine:latest"
