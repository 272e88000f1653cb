GO ?= go
RELEASE_FLAGS = -trimpath -ldflags='-s -w'

.PHONY: build test verify lint fuzz nats bench bench-quick console-shots chaos demo smoke clean release release-check

build:
	CGO_ENABLED=0 $(GO) build $(RELEASE_FLAGS) -o bin/iotkv ./cmd/iotkv
	CGO_ENABLED=0 $(GO) build $(RELEASE_FLAGS) -o bin/iotkv-device ./cmd/iotkv-device

# The README's test command: every test, with the race detector.
test:
	$(GO) test -race -timeout 15m ./...

verify lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1)
	$(GO) vet ./...
	$(GO) mod tidy -diff

FUZZTIME ?= 30s
# Every target runs even when one fails; the failures are listed at the end.
fuzz:
	@failed=""; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || failed="$$failed $$pkg:$$f"; \
	  done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz failed:$$failed"; exit 1; fi

# The NATS baseline is the release the harness was written for (JetStream
# sync_interval: always), in a directory of the project's own (.cache/bin,
# not committed); the harness refuses an older nats-server.
NATS_VERSION = v2.15.2
NATS = $(CURDIR)/.cache/bin/nats-server

$(NATS):
	GOBIN=$(CURDIR)/.cache/bin $(GO) install github.com/nats-io/nats-server/v2@$(NATS_VERSION)

nats: $(NATS)
	@$(NATS) --version | grep -q ' $(NATS_VERSION)$$' || GOBIN=$(CURDIR)/.cache/bin $(GO) install github.com/nats-io/nats-server/v2@$(NATS_VERSION)

# The full run (3 rounds per load figure), then the README's table from its JSON.
bench: nats
	$(GO) build -o bin/iotkv-bench ./bench/cmd/iotkv-bench
	bin/iotkv-bench --nats-server $(NATS) --out bench/results
	bin/iotkv-bench --readme README.md --out bench/results
	$(MAKE) console-shots

# A screenshot of every web console page (edge and master, and the devices
# page on a phone), taken by the browser test in headless chromium.
console-shots:
	IOTKV_CONSOLE_SHOTS=$(CURDIR)/bench/results/console $(GO) test -count=1 -run '^TestConsoleInABrowser$$' ./console
	@ls bench/results/console/*.png 2>/dev/null || echo "console-shots: no screenshots (chromium is not installed)"

bench-quick: nats
	$(GO) build -o bin/iotkv-bench ./bench/cmd/iotkv-bench
	bin/iotkv-bench --quick --nats-server $(NATS) --out bench/results/quick

# Fault tests with the full cycles (20 edge kills, 20 device kills,
# 10 master kills, ...; about 3 minutes). Writes and prints bench/results/chaos.md.
# The short version (2-3 cycles each) runs in `make test`.
chaos:
	IOTKV_CHAOS=full IOTKV_CHAOS_OUT=$(CURDIR)/bench/results/chaos.md $(GO) test -count=1 -timeout 15m -run '^TestChaos$$' ./chaos
	@cat bench/results/chaos.md

# The external contract smoke test, when its checkout is beside this one.
smoke:
	@if [ -f ../shared/smoke/contract.sh ]; then bash ../shared/smoke/contract.sh; else echo 'smoke: no contract smoke test here (../shared/smoke/contract.sh); nothing to run'; fi

demo:
	$(GO) run ./cmd/iotkv demo --duration 0

# dist/: static builds for linux amd64, arm64 and armv7 (tarballs), .deb
# for amd64 and arm64, SHA256SUMS; version from git describe.
release:
	bash deploy/release.sh

# What CI checks on the release (run after make release): the arm binaries
# under qemu-user-static, the amd64 .deb installed with dpkg, its units
# verified by systemd-analyze, the container image built with podman.
release-check:
	bash deploy/release-check.sh

clean:
	rm -rf bin build dist
