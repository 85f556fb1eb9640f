# syntax=docker/dockerfile:1
# Multi-stage build of overlay-switch-webhook: a static-enough Rust binary on
# a distroless, non-root runtime image. (Not built in this repository's CI:
# its machines have no container engine.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY webhooks ./webhooks
COPY benches ./benches
RUN cargo build --release --locked --bin overlay-switch-webhook

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/overlay-switch-webhook /overlay-switch-webhook
USER 65532:65532
EXPOSE 9443 8080
ENTRYPOINT ["/overlay-switch-webhook"]
CMD ["serve"]
