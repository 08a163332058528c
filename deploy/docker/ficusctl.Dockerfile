# syntax=docker/dockerfile:1
# ficusctl: the CLI, e.g. for CI jobs that apply config or inject manifests. Build from the
# repository root:
#   docker build -f deploy/docker/ficusctl.Dockerfile -t ficus/ficusctl:0.1.0 .
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY config config
COPY identity identity
COPY net net
COPY sidecar sidecar
COPY control control
COPY tests tests
COPY benches benches
COPY vendor vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ficus-control --bin ficusctl \
    && cp target/release/ficusctl /ficusctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ficusctl /usr/local/bin/ficusctl
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ficusctl"]
