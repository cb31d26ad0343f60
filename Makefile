# quic-proxy: `make run` starts the proxy in front of three demo backends; `make test` runs every test.
CARGO ?= cargo
BIN := target/release/quic-proxy

.PHONY: run build certs test lint bench clean

run: build
	./scripts/run.sh

build:
	$(CARGO) build --release

certs: build
	$(BIN) cert generate --out certs

test:
	./scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: build
	./bench/run.sh

clean:
	$(CARGO) clean
