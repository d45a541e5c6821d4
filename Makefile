# tokend — see README.md. `make test` and `make bench` need root (they act as
# the test users and mount FUSE filesystems); .ci/setup prepares a machine.

GO      ?= go
BIN     := bin/tokend
# The program on the PAM line, installed beside tokend (cmd/tokend-pam).
PAMBIN  ?= $(dir $(BIN))tokend-pam
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Fuzzers run this long each in `make test`; longer with `make fuzz FUZZTIME=5m`.
FUZZTIME ?= 10s

.PHONY: build demo test setup fuzz bench clean install deb

# `make install`: the binaries (built first with `make build`), the units, the
# PAM snippet, the default /etc/tokend/config.toml (kept if present), the man
# page, bash completion and the docs. DESTDIR stages; PREFIX=/usr for a
# system package. Units and the PAM snippet name $(BINDIR)/tokend and
# $(BINDIR)/tokend-pam.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
DATADIR     ?= $(PREFIX)/share
MANDIR      ?= $(DATADIR)/man
DOCDIR      ?= $(DATADIR)/doc/tokend
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
UNITDIR     ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
SYSCONFDIR  ?= /etc
DESTDIR     ?=
INSTALL     ?= install

# `make deb`: a Debian package in $(DISTDIR), built with nfpm from a tree
# staged by `make install`.
DISTDIR     ?= dist
DEBROOT     ?= $(DISTDIR)/deb-root
DEB_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$$v" | sed 's/^v//; s/-/+/; s/-/./g' || echo "0.0~git$$(git rev-parse --short HEAD 2>/dev/null || echo 0)")
NFPM        ?= github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2

# tokend is linked dynamically (cgo): user lookups go through NSS (SSSD,
# LDAP), so building it needs a C compiler. tokend-pam, which pam_exec runs
# as root with an environment users may set, is static: no dynamic loader
# reads that environment.
build:
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tokend
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(PAMBIN) ./cmd/tokend-pam

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
	    out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || { echo "$$out"; exit 1; }; \
	  done; \
	done

bench: setup build
	$(GO) run ./internal/bench -tokend $(BIN)

clean:
	rm -rf bin dist

install:
	@for f in $(BIN) $(PAMBIN); do test -x $$f || { echo "$$f is missing: run make build first (as yourself), then sudo make install" >&2; exit 1; }; done
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(USERUNITDIR) $(DESTDIR)$(DATADIR)/tokend \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/tokend
	$(INSTALL) -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/tokend
	$(INSTALL) -m 0755 $(PAMBIN) $(DESTDIR)$(BINDIR)/tokend-pam
	for f in tokend-verifyd.service tokend-verifyd.socket; do \
	  sed 's|/usr/bin/tokend|$(BINDIR)/tokend|g' systemd/$$f > $(DESTDIR)$(UNITDIR)/$$f && chmod 0644 $(DESTDIR)$(UNITDIR)/$$f || exit 1; \
	done
	sed 's|/usr/bin/tokend|$(BINDIR)/tokend|g' systemd/tokend.service > $(DESTDIR)$(USERUNITDIR)/tokend.service
	sed 's|/usr/bin/tokend|$(BINDIR)/tokend|g' systemd/pam/tokend-session > $(DESTDIR)$(DATADIR)/tokend/pam-session
	chmod 0644 $(DESTDIR)$(USERUNITDIR)/tokend.service $(DESTDIR)$(DATADIR)/tokend/pam-session
	gzip -9n < packaging/tokend.1 > $(DESTDIR)$(MANDIR)/man1/tokend.1.gz
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/tokend.1.gz
	$(INSTALL) -m 0644 packaging/completion/tokend.bash $(DESTDIR)$(BASHCOMPDIR)/tokend
	$(INSTALL) -m 0644 README.md docs/admin.md docs/user.md $(DESTDIR)$(DOCDIR)/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml (the defaults are in packaging/config.toml)"; \
	else \
	  $(INSTALL) -m 0644 packaging/config.toml $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml; \
	fi
	@echo "installed; turn tokend on with one of (see $(DOCDIR)/admin.md):"
	@echo "  systemctl --global enable tokend.service          (systemd user managers)"
	@echo "  the PAM line in $(DATADIR)/tokend/pam-session      (no user managers)"
	@echo "  systemctl enable --now tokend-verifyd.socket      (key-rotation notices)"

deb: build
	rm -rf $(DEBROOT)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEBROOT)) PREFIX=/usr BIN=$(abspath $(BIN)) PAMBIN=$(abspath $(PAMBIN)) >/dev/null
	$(INSTALL) -D -m 0644 packaging/pam-configs/tokend $(DEBROOT)/usr/share/pam-configs/tokend
	$(INSTALL) -D -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm -t $(DEBROOT)/.maint
	mkdir -p $(DISTDIR)
	cd $(DEBROOT) && DEB_VERSION="$(DEB_VERSION)" DEB_ARCH="$$($(GO) env GOARCH)" \
	  $(GO) run $(NFPM) pkg --packager deb --config $(abspath packaging/nfpm.yaml) --target $(abspath $(DISTDIR))/
