# rinetd — `make run` serves the sample table in the foreground; `make test` checks everything.
CARGO ?= cargo
ETC := $(CURDIR)/etc
RUN_CONF := $(CURDIR)/target/rinetd-run.conf

.PHONY: all build release run test check deps fmt clippy bench clean

all: build

build:
	$(CARGO) build --release

release: build

# The sample table names its handlers relative to etc/; `server` must be absolute, so the
# paths are filled in here.
$(RUN_CONF): etc/rinetd.conf
	@mkdir -p $(dir $@)
	sed 's#@ETC@#$(ETC)#g' etc/rinetd.conf > $@

run: build $(RUN_CONF)
	@echo "rinetd: serving etc/rinetd.conf; try:  nc 127.0.0.1 8080,  nc 127.0.0.1 8081,  or  nc 127.0.0.1 8007 (echo)   (Ctrl-C stops)"
	./target/release/rinetd -f -c $(RUN_CONF)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

check: fmt clippy

# Tools the integration tests run besides rinetd: python3 handlers (run with rinetd's fixed
# PATH, so it must be /usr/bin/python3) and util-linux's prlimit, setpriv and unshare; the TLS
# tests' certificates and clients: openssl, curl and socat (a TLS client that half-closes).
deps:
	@missing=""; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	for tool in prlimit setpriv unshare; do command -v $$tool >/dev/null || missing="$$missing util-linux"; done; \
	for tool in openssl curl socat; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: check deps
	$(CARGO) test --all-targets

clean:
	$(CARGO) clean

# Side by side with forkserver (the floor), tcpserver, xinetd, openbsd-inetd and socat.
bench: build
	bench/run.sh
