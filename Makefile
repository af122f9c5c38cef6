# kube-nftpol — the commands the README names.
#   make test   everything CI runs: formatting, lints, the whole test suite (needs root:
#               tests load rulesets into private network namespaces)
#   make bench  every benchmark of BENCHMARKS.md (figures printed, nothing asserted; root)
#   make demo   the one-command demo (needs root): see below

CARGO ?= cargo

.PHONY: test deps fmt-check lint unit bench build

test: deps fmt-check lint unit

deps:
	@scripts/install-deps.sh

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked

build: deps
	$(CARGO) build --locked --release

bench: deps
	scripts/benchmarks.sh

# The Debian package (release build; packaging/deb/build.sh, described in packaging/README.md).
.PHONY: deb
deb: deps
	packaging/deb/build.sh

# The demo (needs root; about 3 s after the build): a two-node Flannel-like cluster built from
# network namespaces on this machine, one `kube-nftpol run --manifests` per node, an
# application's policies applied step by step, each step measured with real connections and
# checked against the expected matrix (examples/demo.rs). It removes everything it created,
# also on failure and on Ctrl-C; exit status 1 when a measured cell is not as expected.
.PHONY: demo
demo: deps
	$(CARGO) build --locked --release --bin kube-nftpol --example demo
	$${CARGO_TARGET_DIR:-target}/release/examples/demo
