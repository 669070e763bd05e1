# stranger-relay: a multi-stage build.
# 1. cargo-chef computes the dependency recipe, 2. dependencies are built in their own cached
#    layer, 3. the release binary is built (web/ is embedded into it), 4. the runtime image holds
#    only that binary, run as an unprivileged user.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin stranger-relay

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay
COPY --from=builder /app/target/release/stranger-relay /usr/local/bin/stranger-relay
USER relay
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stranger-relay"]
