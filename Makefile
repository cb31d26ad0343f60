# quic-proxy: `make run` starts the proxy in front of three demo backends; `make test` runs every test.
CARGO ?= cargo
BIN := target/release/quic-proxy

.PHONY: run build certs test lint bench bench-micro clean

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
	$(CARGO) test --quiet --test layers

# Criterion microbenchmarks of the hot pure pieces (framing watch, head parsing, chunked decoding, Maglev,
# the body wrapper chain): seconds per run, for a fast loop. `make bench` compares the whole proxy with peers.
bench-micro:
	$(CARGO) bench --bench hot_paths

bench: build
	./bench/run.sh

clean:
	$(CARGO) clean
