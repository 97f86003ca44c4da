# keyway container image: a multi-stage build, then a small Debian runtime
# running as the non-root user keyway (uid/gid 10001), the reference config
# at /etc/keyway/keyway.toml, clients on 6390 and admin HTTP on 9390.
#
#   docker build -t keyway .
#   docker run --rm -p 127.0.0.1:6390:6390 -p 127.0.0.1:9390:9390 \
#     -e REDIS_CACHE_URL=redis://cache-host:6379 keyway
#   docker run --rm keyway --check               # print the resolved routes
#   docker run --rm keyway --log-format json     # flags are appended
#
# The entrypoint already passes --config (keyway refuses it twice): to use
# another file, mount it over /etc/keyway/keyway.toml, or override parts
# with REDIS_<POOL>_URL, KEYWAY_LISTEN, KEYWAY_ADMIN, KEYWAY_LOG,
# KEYWAY_REQUIREPASS.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies in a layer of their own, rebuilt only when Cargo.toml,
# Cargo.lock or the build script change: the instrumented build (see
# below) of placeholder sources. Cargo.toml names the bench target, so its
# file must be there too.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY scripts/build-pgo.sh scripts/install-deps.sh ./scripts/
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && scripts/build-pgo.sh --deps \
 && rm -rf src
COPY src ./src
# Profile-guided: an instrumented keyway serves a training load through a
# redis-server of the build stage's own, and the shipped build is laid out
# by what it recorded (a quarter less user CPU per request; BENCHMARKS.md).
# COPY keeps the files' old times: touch them so cargo rebuilds keyway.
RUN touch src/main.rs src/lib.rs && scripts/build-pgo.sh dist

# debian:bookworm-slim rather than distroless: the HEALTHCHECK and the
# Kubernetes preStop hook need a shell (bash's /dev/tcp instead of curl).
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 keyway \
 && useradd --system --uid 10001 --gid keyway --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin keyway
COPY --from=build /src/target/pgo/dist/keyway /usr/local/bin/keyway
COPY conf/keyway.toml /etc/keyway/keyway.toml
# The file asks for loopback; in a container the published ports need all
# interfaces (env overrides the file).
ENV KEYWAY_LISTEN=0.0.0.0:6390 \
    KEYWAY_ADMIN=0.0.0.0:9390
EXPOSE 6390 9390
USER 10001:10001
# Healthy while the admin endpoint answers 200 on /healthz (on the port of
# KEYWAY_ADMIN). No curl in the image: bash opens the socket itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${KEYWAY_ADMIN##*:}\" && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1\\.[01] 200' <&3"]
# SIGTERM (docker stop) drains: give it server.drain_timeout_ms (10 s by
# default) plus a margin, e.g. `docker stop -t 15` / compose stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keyway", "--config", "/etc/keyway/keyway.toml"]
