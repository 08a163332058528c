# syntax=docker/dockerfile:1
# ficus-sidecar: the proxy, and `ficus-sidecar redirect` for the ficus-init container (which
# is why the runtime image carries iptables). Build from the repository root:
#   docker build -f deploy/docker/ficus-sidecar.Dockerfile -t ficus/ficus-sidecar:0.1.0 .
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# Only what the workspace needs (target/ and the rest stay out of the context's layers).
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY config config
COPY identity identity
COPY net net
COPY sidecar sidecar
COPY control control
COPY tests tests
COPY benches benches
COPY vendor vendor
COPY scripts/build-pgo scripts/cpu-level scripts/
# The profile-guided build (scripts/build-pgo: an instrumented build, a training run on the
# build container's loopback, then the optimised build), the binary benches/run measures:
# once for any x86-64 CPU, and once for x86-64-v3 when the build machine can run (so train)
# it. The entrypoint picks per node.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    mkdir /out \
    && FICUS_PGO_TARGET_CPU=generic FICUS_PGO_CARGO_FLAGS=--locked scripts/build-pgo \
    && cp target/pgo/ficus-sidecar /out/ficus-sidecar-generic \
    && if [ "$(scripts/cpu-level)" = x86-64-v3 ]; then \
         FICUS_PGO_TARGET_CPU=x86-64-v3 FICUS_PGO_CARGO_FLAGS=--locked scripts/build-pgo \
         && cp target/pgo/ficus-sidecar /out/ficus-sidecar-x86-64-v3; \
       fi

FROM debian:bookworm-slim
# iptables (nft and legacy backends) for `redirect`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/lib/ficus/
COPY scripts/cpu-level /usr/local/lib/ficus/cpu-level
COPY deploy/docker/ficus-sidecar-select /usr/local/bin/ficus-sidecar
# The proxy runs as 1337, the uid the redirect rules exempt; the init container overrides it
# with root for `redirect`.
USER 1337:1337
EXPOSE 15000 15001 15006
ENTRYPOINT ["/usr/local/bin/ficus-sidecar"]
