# syntax=docker/dockerfile:1
#
# quic-proxy container image.
#
#   docker build -t quic-proxy .
#   docker run --rm -p 443:443/tcp -p 443:443/udp -p 80:80 \
#     -v "$PWD/tls:/etc/quic-proxy/tls:ro" -v "$PWD/proxy.yaml:/etc/quic-proxy/proxy.yaml:ro" quic-proxy
#
# Stages:
#   build     compiles the release binary from source in the official Rust image.
#   prebuilt  takes a binary built outside the image instead: the build context's `target/release/quic-proxy`
#             (it must be built on Debian 12 or an older glibc, like the runtime stage).
#   runtime   Debian slim, the binary, /etc/quic-proxy and a non-root user. BINARY_STAGE picks which of the
#             two stages above provides the binary; BuildKit (Docker's builder since 23.0, needed for the
#             cache mounts anyway) and buildah build only the stages the target needs.
#
# A plain `docker build` takes the build stage. CI builds only the runtime stage, with
#   buildah bud --target runtime --build-arg BINARY_STAGE=prebuilt --build-arg RUNTIME_IMAGE=<local base>
# because it reaches no container registry: it cannot pull the Rust image, so it packs the binary that
# `cargo build --release` made on the host, on a Debian 12 base made locally with debootstrap
# (tests/deploy/test_image.py).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY_STAGE=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The cache mounts keep crates and compiled dependencies between builds; the binary is copied out of the
# cached target directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/quic-proxy /out/quic-proxy

FROM scratch AS prebuilt
COPY target/release/quic-proxy /out/quic-proxy

# Only an ARG can choose a stage, and only in FROM: COPY --from takes no variables.
FROM ${BINARY_STAGE} AS binary

FROM ${RUNTIME_IMAGE} AS runtime
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it and file ownership (fsGroup, mounted
# secrets) can name it.
RUN groupadd --gid 10001 quic-proxy \
    && useradd --no-log-init --uid 10001 --gid quic-proxy \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin quic-proxy \
    && install -d -m 0755 /etc/quic-proxy /etc/quic-proxy/tls /etc/quic-proxy/secrets
COPY --from=binary --chmod=0755 /out/quic-proxy /usr/local/bin/quic-proxy
# Owned by root and read-only to the proxy: it reads its config, certificates and secrets, and writes nothing.
COPY --chmod=0644 deploy/proxy.yaml /etc/quic-proxy/proxy.yaml

# Ports below 1024 as a non-root user: the image adds no capability (file capabilities would not work
# anyway under no_new_privs, which Kubernetes sets with `allowPrivilegeEscalation: false`). Instead the
# container's network namespace lets any user bind low ports: Docker 20.10 and later set
# net.ipv4.ip_unprivileged_port_start=0 in every container it gives its own network namespace; Kubernetes
# sets the same safe sysctl from the pod's securityContext (deploy/kubernetes/deployment.yaml); Podman takes
# `--sysctl net.ipv4.ip_unprivileged_port_start=0`. With host networking the host's own setting applies.
USER 10001:10001
EXPOSE 443/tcp 443/udp 80/tcp 9090/tcp

# The proxy is PID 1 (exec form): SIGTERM reaches it directly and starts the drain (stop accepting, HTTP/3
# GOAWAY, in-flight requests finish within server.drain_timeout). `docker stop` waits 10s by default:
# give it `-t 35` for the default 30s drain. The proxy starts no child processes, so no init is needed.
STOPSIGNAL SIGTERM

# /live on the admin port, with bash's /dev/tcp since the image has no HTTP client. It assumes the admin
# listener on port 9090 (telemetry.metrics.address); Kubernetes ignores HEALTHCHECK and uses its own probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /live HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ]"]

ENTRYPOINT ["/usr/local/bin/quic-proxy"]
CMD ["--config", "/etc/quic-proxy/proxy.yaml"]
