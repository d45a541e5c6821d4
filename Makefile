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

.PHONY: build launcher demo test setup fuzz bench clean install deb rpm

# `make install`: the binaries (built first with `make build`), the units, the
# PAM snippet, the default /etc/tokend/config.toml (kept if present), the man
# page, bash completion, the docs and the license. DESTDIR stages;
# PREFIX=/usr for a system package. Units and the PAM snippet name
# $(BINDIR)/tokend and $(BINDIR)/tokend-pam.
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

# `make deb` and `make rpm`: the Debian and the Enterprise Linux package in
# $(DISTDIR), built with nfpm (packaging/nfpm.yaml) from a tree staged by
# `make install`. Staging a file in `make install` stages it for both; a
# program in $(BINDIR) needs nothing more, any other file a line in
# packaging/nfpm.yaml.
DISTDIR     ?= dist
DEBROOT     ?= $(DISTDIR)/deb-root
RPMROOT     ?= $(DISTDIR)/rpm-root
# The version orders for upgrades in dpkg and rpm alike: tag v1.2.3 gives
# 1.2.3 (v1.2.3-rc1: 1.2.3~rc1, before 1.2.3); 5 commits after it,
# 1.2.3+5.g<hash>; with no tag, 0.0~git<commit time, UTC>.<hash>.
PKG_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) \
	&& echo "$$v" | sed -e 's/^v//' -e 's/-\([0-9][0-9]*\)-g\([0-9a-f]*\)$$/+\1.g\2/' -e 's/-/~/g' \
	|| echo "0.0~git$$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S).$$(git rev-parse --short HEAD 2>/dev/null || echo 0)")
DEB_VERSION ?= $(PKG_VERSION)
RPM_VERSION ?= $(PKG_VERSION)
NFPM        ?= github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2

# pkg-changelog writes the package's changelog (nfpm's chglog format) into
# $(1)/.maint: one entry for version $(2), dated at the commit it is built
# from.
define pkg-changelog
	mkdir -p $(1)/.maint
	printf '%s\n' '- semver: "$(2)"' \
	  "  date: $$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)" \
	  '  packager: tokend developers <tokend@users.noreply.github.com>' \
	  '  changes:' \
	  "    - note: Built from commit $$(git rev-parse --short HEAD 2>/dev/null || echo unknown) of https://github.com/tokend/tokend" \
	  > $(1)/.maint/changelog.yml
endef

# tokend is linked dynamically (cgo): user lookups go through NSS (SSSD,
# LDAP), so building it needs a C compiler. tokend-pam, which pam_exec runs
# as root with an environment users may set, is C linked statically (and so
# not PIE): no dynamic loader and no language runtime (Go's reads GOMAXPROCS,
# GODEBUG, ...) reads that environment before it runs. It needs the static C
# library (libc6-dev; glibc-static on EL). The tests build it with `make
# launcher` too (testenv.BuildLauncher), with $(CC): cc unless set.
PAMCFLAGS ?= -O2 -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=2

build: launcher
	CGO_ENABLED=1 $(GO) build -trimpath $(BUILDFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tokend

launcher:
	mkdir -p $(dir $(PAMBIN))
	$(CC) -static $(PAMCFLAGS) -o $(PAMBIN) cmd/tokend-pam/main.c

demo: build
	./$(BIN) demo

setup:
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root (it acts as the test users and mounts FUSE): sudo make test" >&2; exit 1; fi
	./.ci/setup

# TOKEND_TEST_ALL=1: a test that would skip for lack of root or FUSE fails instead.
test: setup
	$(GO) vet ./...
	TOKEND_TEST_ALL=1 $(GO) test -race -timeout 20m ./...
	$(MAKE) fuzz
	@! grep -E ' fuse(\.tokend)? ' /proc/mounts | grep tokend || { echo "tests left a tokend mount behind" >&2; exit 1; }

# Every fuzz target, one at a time (go test -fuzz takes one target per run).
# A run that fails with a bare "context deadline exceeded" and no failing
# input written is Go's fuzzing coordinator racing its own -fuzztime
# deadline (golang/go#75804, fixed in Go 1.27), not a finding: it runs once
# more, and fails for real the second time.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; \
	    out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) && continue; \
	    if echo "$$out" | grep -q '^    context deadline exceeded$$' && ! echo "$$out" | grep -q 'Failing input written'; then \
	      echo "fuzz $$pkg $$f: the fuzzing coordinator's deadline race (golang/go#75804); once more"; \
	      out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) && continue; \
	    fi; \
	    echo "$$out"; exit 1; \
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
	$(INSTALL) -m 0644 README.md LICENSE docs/admin.md docs/user.md $(DESTDIR)$(DOCDIR)/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml (the defaults are in packaging/config.toml)"; \
	else \
	  $(INSTALL) -m 0644 packaging/config.toml $(DESTDIR)$(SYSCONFDIR)/tokend/config.toml; \
	fi
	@echo "installed; turn tokend on with one of (see $(DOCDIR)/admin.md):"
	@echo "  systemctl --global enable tokend.service          (systemd user managers)"
	@echo "  the PAM line in $(DATADIR)/tokend/pam-session      (no user managers)"
	@echo "  systemctl enable --now tokend-verifyd.socket      (key-rotation notices)"

# The packages' binaries are stripped (as rpmbuild and dh_strip would), and
# tokend is position-independent (EL's hardening).
deb rpm: LDFLAGS += -s -w
deb rpm: BUILDFLAGS += -buildmode=pie
deb rpm: PAMCFLAGS += -s

deb: build
	rm -rf $(DEBROOT)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEBROOT)) PREFIX=/usr BIN=$(abspath $(BIN)) PAMBIN=$(abspath $(PAMBIN)) >/dev/null
	$(INSTALL) -D -m 0644 packaging/pam-configs/tokend $(DEBROOT)/usr/share/pam-configs/tokend
	$(INSTALL) -D -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm -t $(DEBROOT)/.maint
	$(call pkg-changelog,$(DEBROOT),$(DEB_VERSION))
	mkdir -p $(DISTDIR)
	cd $(DEBROOT) && PKG_VERSION="$(DEB_VERSION)" PKG_ARCH="$$($(GO) env GOARCH)" \
	  $(GO) run $(NFPM) pkg --packager deb --config $(abspath packaging/nfpm.yaml) --target $(abspath $(DISTDIR))/

# dist/tokend-<version>-1.<arch>.rpm for EL 8 and 9: the same tree, plus the
# license and rpm's own scriptlets (packaging/rpm/), and no pam-configs.
# The binary links the build host's glibc (cgo: user lookups go through
# NSS, for SSSD and LDAP users), so the rpm requires the newest glibc symbol
# version it uses, as rpmbuild would: built on EL 8 it installs on EL 8 and
# 9; built on a newer system (Debian 12: glibc 2.34) dnf refuses it on EL 8
# rather than install a binary that cannot start.
# nfpm writes absolute paths into the payload: unpack it with rpm2archive,
# or cpio --no-absolute-filenames, never a bare `rpm2cpio | cpio -i` as root
# (rpmlint does that: see TestRPMPackage for how CI runs it).
rpm: build
	rm -rf $(RPMROOT)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(RPMROOT)) PREFIX=/usr BIN=$(abspath $(BIN)) PAMBIN=$(abspath $(PAMBIN)) >/dev/null
	$(INSTALL) -D -m 0644 LICENSE $(RPMROOT)/usr/share/licenses/tokend/LICENSE
	$(INSTALL) -D -m 0644 packaging/rpm/post packaging/rpm/preun packaging/rpm/postun -t $(RPMROOT)/.maint
	$(call pkg-changelog,$(RPMROOT),$(RPM_VERSION)-1)
	mkdir -p $(DISTDIR)
	cd $(RPMROOT) && PKG_VERSION="$(RPM_VERSION)" PKG_ARCH="$$($(GO) env GOARCH)" \
	  RPM_GLIBC="$$(objdump -T $(abspath $(BIN)) | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 | sed 's/.*/libc.so.6(&)(64bit)/')" \
	  $(GO) run $(NFPM) pkg --packager rpm --config $(abspath packaging/nfpm.yaml) --target $(abspath $(DISTDIR))/
