# kube-nftpol — the commands the README names.
#   make test   everything CI runs: formatting, lints, the whole test suite (needs root:
#               tests load rulesets into private network namespaces)
#   make bench  benchmarks (figures printed, nothing asserted)

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
	$(CARGO) bench --locked

# The Debian package (release build; packaging/deb/build.sh, described in packaging/README.md).
.PHONY: deb
deb: deps
	packaging/deb/build.sh
