# syntax=docker/dockerfile:1
#
# The kafka-scc container image:
#
#   docker build -t kafka-scc .
#   docker run --rm kafka-scc --help
#
# The build stage compiles librdkafka and OpenSSL from source through the rdkafka crate
# (librdkafka's own configure script and make; OpenSSL's build needs perl). The official Rust
# image has gcc, make and perl, and protoc comes inside a crate, so the stage installs nothing.
# The binary links only libc, libm, libgcc_s and libz dynamically; OpenSSL is linked in.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds, so the
# binary is copied out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kafka-scc \
    && install -D -m 0755 target/release/kafka-scc /out/kafka-scc

FROM debian:bookworm-slim
# ca-certificates provides the CA bundle that verifies brokers' and handlers' TLS
# certificates, and zlib1g is the libz that the binary links for librdkafka's gzip compression.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric id lets Kubernetes check runAsNonRoot without reading /etc/passwd.
RUN groupadd --gid 10001 kafka-scc \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kafka-scc
COPY --from=builder /out/kafka-scc /usr/local/bin/kafka-scc
COPY examples/kafka-scc.toml /usr/share/doc/kafka-scc/kafka-scc.toml
USER 10001:10001
# SCC_HTTP_ADDR's default port: /metrics, /healthz and /readyz.
EXPOSE 9464
ENTRYPOINT ["kafka-scc"]
