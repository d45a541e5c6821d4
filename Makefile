# tokend — see README.md. `make test` and `make bench` need root (they act as
# the test users and mount FUSE filesystems); .ci/setup prepares a machine.

GO      ?= go
BIN     := bin/tokend
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Fuzzers run this long each in `make test`; longer with `make fuzz FUZZTIME=5m`.
FUZZTIME ?= 10s

.PHONY: build demo test setup fuzz bench clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tokend

demo: build
	./$(BIN) demo

setup:
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root (it acts as the test users and mounts FUSE): sudo make test" >&2; exit 1; fi
	./.ci/setup

test: setup
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...
	$(MAKE) fuzz
	@! grep -E ' fuse(\.tokend)? ' /proc/mounts | grep tokend || { echo "tests left a tokend mount behind" >&2; exit 1; }

# Every fuzz target, one at a time (go test -fuzz takes one target per run).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/dev/null || exit 1; \
	  done; \
	done

bench: setup build
	$(GO) run ./internal/bench -tokend $(BIN)

clean:
	rm -rf bin dist
