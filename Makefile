# rinetd — `make run` serves the sample table in the foreground; `make test` checks everything;
# `make install` / `make uninstall` (PREFIX, DESTDIR); `make deb` builds a Debian package.
CARGO ?= cargo
ETC := $(CURDIR)/etc
# `make run`'s table: in a folder of its own, mode 0755, whatever the umask (rinetd refuses a
# table that group or others can write, or that sits in such a folder).
RUN_DIR ?= $(CURDIR)/target/run

# Where `make install` puts things: PREFIX=/usr for a distribution, DESTDIR to stage.
PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/rinetd
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
# Empty: the OpenRC script goes to the examples only.
OPENRCDIR ?= $(SYSCONFDIR)/init.d
# The binary to install; `make install BIN=path` installs one built elsewhere (the tests do).
BIN ?= target/release/rinetd
ifeq ($(BIN),target/release/rinetd)
BUILD_FIRST := build
endif

# The Debian package. Debian's "rinetd" is a different program (a TCP redirector) with the
# same paths: this package has its own name and conflicts with it.
DEB_PACKAGE := rinetd-superserver
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_VERSION ?= $(VERSION)-1
DEB_OUT ?= target/deb
MAINTAINER ?= rinetd developers <rinetd@example.org>
DEB_DATE := $(shell git log -1 --format=%aD 2>/dev/null || date -R)

# The installed unit and OpenRC files name the installed binary and table.
INSTALL_PATHS := sed -e 's\#/usr/sbin/rinetd\#$(SBINDIR)/rinetd\#g' -e 's\#/etc/rinetd.conf\#$(SYSCONFDIR)/rinetd.conf\#g'
EXAMPLES := $(DOCDIR)/examples

.PHONY: all build release run run-config run-supervised test check deps fmt clippy bench clean install uninstall deb

all: build

build:
	$(CARGO) build --release

release: build

# The sample table names its handlers relative to etc/; `server` must be absolute, so the
# paths are filled in here. Run as root, the table says `user: root` itself: the handlers run as
# root because you asked for it, not by default (which rinetd warns about).
run-config:
	@install -d -m 755 $(RUN_DIR) && chmod 755 $(RUN_DIR)
	@sed 's#@ETC@#$(ETC)#g' etc/rinetd.conf \
		| if [ "$$(id -u)" = 0 ]; then sed 's/^defaults:$$/defaults:\n  user: root   # make run as root: said, not defaulted/'; else cat; fi \
		> $(RUN_DIR)/rinetd.conf.new
	@chmod 644 $(RUN_DIR)/rinetd.conf.new && mv $(RUN_DIR)/rinetd.conf.new $(RUN_DIR)/rinetd.conf

run-supervised: build run-config
	@sed 's#@ETC@#$(ETC)#g' etc/supervised.conf \
		| if [ "$$(id -u)" = 0 ]; then sed 's/^services:$$/defaults:\n  user: root   # make run as root: said, not defaulted\nservices:/'; else cat; fi \
		> $(RUN_DIR)/supervised.conf.new
	@chmod 644 $(RUN_DIR)/supervised.conf.new && mv $(RUN_DIR)/supervised.conf.new $(RUN_DIR)/supervised.conf
	@echo "rinetd: serving etc/supervised.conf (Ctrl-C stops). Try:  nc -d 127.0.0.1 8090, kill the daemon's pid and try again"
	./target/release/rinetd -f -c $(RUN_DIR)/supervised.conf

run: build run-config
	@echo "rinetd: serving etc/rinetd.conf (Ctrl-C stops). Try:  nc -d 127.0.0.1 8080   nc -d 127.0.0.1 8081   nc -N 127.0.0.1 8007 (echo: Ctrl-D ends)"
	./target/release/rinetd -f -c $(RUN_DIR)/rinetd.conf

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

check: fmt clippy

# Tools the integration tests run besides rinetd: python3 handlers (run with rinetd's fixed
# PATH, so it must be /usr/bin/python3) and util-linux's prlimit, setpriv and unshare; the
# compatibility tests' clients (netcat-openbsd, rdate), man (man-db, groff-base) and the
# package tools (dpkg-dev's objdump comes from binutils, lintian); and Debian's stock inetd and
# xinetd files, unpacked under target/ by tests/debian-stock.sh; the TLS tests' certificates
# and clients: openssl, curl and socat (a TLS client that half-closes); ip (iproute2) to bring
# up the loopback of the network namespace the wildcard socket-activation tests run in.
deps:
	@missing=""; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	for tool in prlimit setpriv unshare; do command -v $$tool >/dev/null || missing="$$missing util-linux"; done; \
	command -v nc >/dev/null || missing="$$missing netcat-openbsd"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v rdate >/dev/null || missing="$$missing rdate"; \
	command -v man >/dev/null || missing="$$missing man-db"; \
	command -v groff >/dev/null || missing="$$missing groff-base"; \
	command -v objdump >/dev/null || missing="$$missing binutils"; \
	command -v lintian >/dev/null || missing="$$missing lintian"; \
	for tool in openssl curl socat haproxy; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	command -v stunnel4 >/dev/null || missing="$$missing stunnel4"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	sh tests/debian-stock.sh target/debian-stock
	@# From PyPI: the Prometheus text parser that reads the metrics builtin's scrapes.
	@python3 -c 'import prometheus_client' 2>/dev/null \
		|| python3 -m pip install --quiet prometheus_client \
		|| python3 -m pip install --quiet --break-system-packages prometheus_client

# Every log line the integration tests make rinetd write is kept and checked: logfmt, and one of
# the shapes docs/log-events.md lists.
TEST_LOGS := $(CURDIR)/target/test-logs

test: check deps
	rm -rf $(TEST_LOGS)
	RINETD_TEST_LOGS=$(TEST_LOGS) $(CARGO) test --all-targets
	RINETD_CHECK_LOGS=$(TEST_LOGS) $(CARGO) test --test logfmt_check

clean:
	$(CARGO) clean

install: $(BUILD_FIRST)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) \
		$(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(EXAMPLES)/handlers $(DESTDIR)$(SYSCONFDIR)
	install -m 755 $(BIN) $(DESTDIR)$(SBINDIR)/rinetd
	install -m 644 man/rinetd.8 $(DESTDIR)$(MANDIR)/man8/rinetd.8
	install -m 644 man/rinetd.conf.5 $(DESTDIR)$(MANDIR)/man5/rinetd.conf.5
	# Completions come from the command-line definition itself (clap_complete).
	$(BIN) completions bash > $(DESTDIR)$(BASHCOMPDIR)/rinetd
	$(BIN) completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_rinetd
	$(BIN) completions fish > $(DESTDIR)$(FISHCOMPDIR)/rinetd.fish
	chmod 644 $(DESTDIR)$(BASHCOMPDIR)/rinetd $(DESTDIR)$(ZSHCOMPDIR)/_rinetd $(DESTDIR)$(FISHCOMPDIR)/rinetd.fish
	$(INSTALL_PATHS) etc/rinetd.service > $(DESTDIR)$(SYSTEMDUNITDIR)/rinetd.service
	install -m 644 etc/rinetd.socket $(DESTDIR)$(SYSTEMDUNITDIR)/rinetd.socket
	chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/rinetd.service
	$(INSTALL_PATHS) etc/rinetd.openrc > $(DESTDIR)$(EXAMPLES)/rinetd.openrc
	if [ -n "$(OPENRCDIR)" ]; then install -d $(DESTDIR)$(OPENRCDIR) && \
		install -m 755 $(DESTDIR)$(EXAMPLES)/rinetd.openrc $(DESTDIR)$(OPENRCDIR)/rinetd; fi
	chmod 644 $(DESTDIR)$(EXAMPLES)/rinetd.openrc
	install -m 755 etc/handlers/*.sh etc/handlers/*.py $(DESTDIR)$(EXAMPLES)/handlers/
	sed 's#@ETC@#$(EXAMPLES)#g' etc/rinetd.conf > $(DESTDIR)$(EXAMPLES)/rinetd.conf
	sed 's#@ETC@#$(EXAMPLES)#g' etc/supervised.conf > $(DESTDIR)$(EXAMPLES)/supervised.conf
	chmod 644 $(DESTDIR)$(EXAMPLES)/rinetd.conf $(DESTDIR)$(EXAMPLES)/supervised.conf
	install -m 644 README.md LICENSE $(DESTDIR)$(DOCDIR)/
	# An edited table is never overwritten.
	if [ -e $(DESTDIR)$(SYSCONFDIR)/rinetd.conf ]; then \
		echo "kept the existing $(DESTDIR)$(SYSCONFDIR)/rinetd.conf"; \
	else install -m 644 etc/rinetd.conf.default $(DESTDIR)$(SYSCONFDIR)/rinetd.conf; fi

# Removes what `install` put there, except the table (it may hold the operator's edits).
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/rinetd $(DESTDIR)$(MANDIR)/man8/rinetd.8 \
		$(DESTDIR)$(MANDIR)/man5/rinetd.conf.5 $(DESTDIR)$(BASHCOMPDIR)/rinetd \
		$(DESTDIR)$(ZSHCOMPDIR)/_rinetd $(DESTDIR)$(FISHCOMPDIR)/rinetd.fish \
		$(DESTDIR)$(SYSTEMDUNITDIR)/rinetd.service $(DESTDIR)$(SYSTEMDUNITDIR)/rinetd.socket
	if [ -n "$(OPENRCDIR)" ]; then rm -f $(DESTDIR)$(OPENRCDIR)/rinetd; fi
	rm -rf $(DESTDIR)$(DOCDIR)
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/rinetd.conf"

# A Debian package of the release build, checked by lintian in the tests.
deb: $(BUILD_FIRST)
	rm -rf $(DEB_OUT)/root
	$(MAKE) install DESTDIR=$(abspath $(DEB_OUT)/root) PREFIX=/usr BIN=$(BIN) \
		SYSTEMDUNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions \
		OPENRCDIR= DOCDIR=/usr/share/doc/$(DEB_PACKAGE)
	packaging/debian/build-deb.sh $(DEB_OUT)/root $(DEB_OUT) $(DEB_PACKAGE) $(DEB_VERSION) \
		"$(MAINTAINER)" "$(DEB_DATE)"

# Side by side with the C floors (forkserver, udpecho), tcpserver, xinetd, openbsd-inetd and socat:
# TCP, UDP echo, memory, start-up and reload, 5 interleaved rounds; the table is printed and kept
# in target/bench/ with the raw per-round CSV. BENCH_ARGS passes options or sections, e.g.
# `make bench BENCH_ARGS="tcp udp"`; RINETD_BASELINE=/path/to/old/rinetd adds its rows.
bench: build
	bench/run.sh $(BENCH_ARGS)

# A smoke run of the same (2 rounds of 1 s): checks the instrument, gives no figures to quote.
.PHONY: bench-quick
bench-quick: build
	bench/run.sh --quick $(BENCH_ARGS)

# `make test-long`: the checks too slow for `make test` (.ci/run runs it after `make test`).
# Each part adds itself as a prerequisite, `test-long: test-long-PART`, in a block of its own.
.PHONY: test-long
test-long:

# --- Fuzzing (issue 12): the cargo-fuzz targets in fuzz/ (see fuzz/README.md), each run for
# FUZZ_SECONDS at nice 19; FUZZ_TARGETS picks some. Needs the nightly toolchain; installs
# cargo-fuzz when missing. A crash or hang fails the run and is kept in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
.PHONY: fuzz
fuzz:
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Fuzzing's part: every target for 20 s (skipped, saying why, without a nightly toolchain).
.PHONY: test-long-fuzz
test-long: test-long-fuzz
test-long-fuzz:
	fuzz/run.sh --if-available 20

# --- Fault injection and soak (issue 12) ------------------------------------------------------
# Fault injection's part of `make test-long`: the fault-injection tests (tests/faults,
# `#[ignore]`d in `make test`), one at a time so that one fault's load does not blur another's
# CPU and latency figures, and a short soak. Each prints `FIGURES fault=…` / `SOAK …` lines.
# Tests named `defect_…` pin defects not fixed yet: `make test-defects` runs them.
# `make soak` is the long run: SOAK_SECONDS (default 600) of mixed load with a reload a second,
# against the release build.
SOAK_SECONDS ?= 600
SHORT_SOAK_SECONDS ?= 60
FAULTS := RINETD_BIN=$(CURDIR)/target/release/rinetd $(CARGO) test --test faults -- --ignored --nocapture --test-threads=1

.PHONY: faults test-defects soak soak-short
test-long: faults soak-short

faults: deps build
	$(FAULTS) --skip defect_

test-defects: deps build
	$(FAULTS) defect_

soak: build
	RINETD_BIN=$(CURDIR)/target/release/rinetd SOAK_SECONDS=$(SOAK_SECONDS) \
		$(CARGO) test --test soak -- --ignored --nocapture

soak-short:
	$(MAKE) soak SOAK_SECONDS=$(SHORT_SOAK_SECONDS)
