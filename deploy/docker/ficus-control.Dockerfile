# syntax=docker/dockerfile:1
# ficus-control: the control plane. Build from the repository root:
#   docker build -f deploy/docker/ficus-control.Dockerfile -t ficus/ficus-control:0.1.0 .
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
    cargo build --release --locked -p ficus-control --bin ficus-control \
    && cp target/release/ficus-control /ficus-control

# glibc, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ficus-control /usr/local/bin/ficus-control
USER 65532:65532
EXPOSE 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/ficus-control"]
