# syntax=docker/dockerfile:1
# mpc-action-gateway: multi-stage build with a cached dependency layer.

FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --recipe-path recipe.json --bin mpc-action-gateway
COPY . .
RUN cargo build --release --locked --bin mpc-action-gateway

FROM debian:bookworm-slim AS runtime
# The binary carries its TLS roots and its default configuration.
RUN useradd --system --uid 10001 --home-dir /var/lib/mpc-action-gateway --create-home gateway
COPY --from=builder /app/target/release/mpc-action-gateway /usr/local/bin/mpc-action-gateway
COPY config/default.toml /etc/mpc-action-gateway/default.toml
USER 10001:10001
WORKDIR /var/lib/mpc-action-gateway
# Listen on every interface inside the container; publish the ports as needed.
# On 8081, /healthz, /readyz and /metrics need no token; the /admin/ routes
# answer 403 until MPC_GATEWAY__ADMIN__TOKEN_SHA256 (from `hash-key`) is set.
ENV MPC_GATEWAY__SERVER__LISTEN=0.0.0.0:8080 \
    MPC_GATEWAY__ADMIN__LISTEN=0.0.0.0:8081 \
    MPC_GATEWAY__AUTH__ALLOW_ANONYMOUS=false \
    MPC_GATEWAY__LOG__FORMAT=json
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["mpc-action-gateway", "healthcheck", "--url", "http://127.0.0.1:8081/healthz"]
ENTRYPOINT ["mpc-action-gateway"]
CMD ["serve"]
