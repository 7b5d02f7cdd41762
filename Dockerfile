# syntax=docker/dockerfile:1
#
# One image for the whole system: the `tracehop` command and the service
# executables. The container's command chooses which one runs
# (compose.yaml sets it per service).
#
#   docker build -t tracehop:local .

# ---- build -----------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and target/ between builds, so that a
# code change recompiles the workspace crates only. target/ is a cache mount,
# not part of the image, so the executables are copied out in the same step:
# every tracehop* executable (a service added to the workspace comes along),
# and the build fails if one of the known ones is missing.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --workspace --locked \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -perm -u+x -name 'tracehop*' -exec cp {} /out/ \; \
 && for bin in tracehop tracehop-gateway tracehop-order tracehop-inventory tracehop-payment \
               tracehop-loyalty tracehop-notification tracehop-analytics tracehop-sentinel tracehop-keeper; do \
        test -x "/out/$bin" || { echo "missing executable: $bin" >&2; exit 1; }; \
    done \
 && ls /out

# ---- runtime ---------------------------------------------------------------
# Same Debian release as the build stage, so the glibc the executables were
# linked against is there.
FROM debian:bookworm-slim
# ca-certificates is left unpinned on purpose: it should be the newest.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so that `runAsNonRoot`-style checks can verify it.
# /var/lib/tracehop/mail is created here, owned by that user: a named volume
# mounted there starts as a copy of it, and so is writable by the services.
RUN groupadd --system --gid 10001 tracehop \
 && useradd --system --uid 10001 --gid tracehop --home-dir /var/lib/tracehop \
        --shell /usr/sbin/nologin tracehop \
 && mkdir -p /var/lib/tracehop/mail \
 && chown -R tracehop:tracehop /var/lib/tracehop
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/tracehop
ENV RUST_LOG=info
# No default service: a container runs the executable its command names.
CMD ["tracehop", "--help"]
