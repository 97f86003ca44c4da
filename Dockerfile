# keyway container image: a multi-stage build, a small Debian runtime with a
# non-root user, the config at /etc/keyway/keyway.toml.
#   docker build -t keyway .
#   docker run -p 6390:6390 -p 9390:9390 -e REDIS_CACHE_URL=redis://cache:6379 keyway
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin keyway

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin keyway
COPY --from=build /src/target/release/keyway /usr/local/bin/keyway
COPY conf/keyway.toml /etc/keyway/keyway.toml
ENV KEYWAY_LISTEN=0.0.0.0:6390 \
    KEYWAY_ADMIN=0.0.0.0:9390
EXPOSE 6390 9390
USER 10001:10001
# bash's /dev/tcp needs no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9390 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["/usr/local/bin/keyway", "--config", "/etc/keyway/keyway.toml"]
