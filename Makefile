# ttshub: the two commands of README.
#   make run   installs what is missing (apt-get), builds, starts `ttshub serve` on the embedded default
#   make test  installs, builds, runs every test (unit, sanitizers, end-to-end, browser, fuzz smoke)
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
PY         := /usr/bin/python3
CONFIG     ?=
ARGS       ?=
# end-to-end tests run in parallel pytest workers (pytest-xdist): they mostly wait on processes; the
# sanitizer build is heavier, so it gets fewer
E2E_JOBS   ?= 3
E2E_ASAN_JOBS ?= 2

.PHONY: all deps test-deps build run test unit asan e2e browser fuzz bench format format-check lint clean \
        deb image test-deploy

all: build

deps:
	@bash scripts/deps.sh build

test-deps:
	@bash scripts/deps.sh test

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/ttshub serve $(if $(CONFIG),-c $(CONFIG)) $(ARGS)

unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTH_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS)

e2e: build
	$(PY) -m pytest -q -p no:cacheprovider -n $(E2E_JOBS) tests/e2e $(PYTEST_ARGS)

# e2e against the sanitizer build: any ASan/UBSan report fails the server's exit check
e2e-asan: asan
	TTSHUB_BIN=$(CURDIR)/$(ASAN_BUILD)/ttshub $(PY) -m pytest -q -p no:cacheprovider -n $(E2E_ASAN_JOBS) tests/e2e --ignore=tests/e2e/fakes $(PYTEST_ARGS)

# the web pages in Debian's chromium, driven by playwright-core (from npm, pinned by package-lock.json)
browser: test-deps build
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	cd tests/browser && TTSHUB_BIN=$(CURDIR)/$(BUILD)/ttshub node --test --test-concurrency=1

fuzz: deps
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTH_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $$(cd tests/fuzz && ls fuzz_*.c | sed "s/\.c$$//")
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $${FUZZ_SECONDS:-60}

test: test-deps build
	$(MAKE) format-check
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) e2e-asan
	$(MAKE) e2e
	$(MAKE) browser
	$(MAKE) fuzz

bench: test-deps build
	bash bench/run.sh

format:
	clang-format -i $$(find src tests/unit tests/fuzz -name '*.[ch]')

format-check:
	clang-format --dry-run --Werror $$(find src tests/unit tests/fuzz -name '*.[ch]')

lint:
	@! grep -rnE '\b(sprintf|vsprintf|strcpy|strcat|atoi|atol|strtok|gets)\s*\(' src --include='*.[ch]'
	@$(PY) scripts/check-layers.py
	@$(PY) scripts/check-func-length.py
	@# a buffer with no maximum: say on the line why nothing outside can grow it
	@! grep -rnE 'th_buf_init\([^;]*,[[:space:]]*0\);' src --include='*.c' | grep -v '/\*'

# Deployment (README "Deployment"): the Debian package, the container image, and their tests (package,
# image, compose cluster, Kubernetes manifests, Prometheus rules). The tools come from Debian
# (scripts/deploy-deps.sh); the base image and apt downloads are cached under /var/cache/ttshub-deploy.
IMAGE ?= localhost/ttshub:latest

deb:
	@bash scripts/deploy-deps.sh deb
	@bash scripts/deps.sh build
	bash deploy/build-deb.sh

image:
	@bash scripts/deploy-deps.sh deploy
	bash deploy/base-image.sh
	podman build --format docker -f deploy/Containerfile -t $(IMAGE) .

test-deploy: build
	IMAGE=$(IMAGE) bash deploy/test-deploy.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
