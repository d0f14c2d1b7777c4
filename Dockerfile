# One image holding both binaries, `producer` and `worker`: `make image` builds it here (buildah, with base images
# made from Debian's packages by scripts/image.sh); anywhere else `docker build .` or `buildah bud .` uses the
# public images named below.
#
# Run it as any numeric user with a read-only root filesystem: the worker writes only under GITFLEET_GIT_ROOT
# (/var/lib/gitfleet/git), GITFLEET_STORAGE_ROOT (/var/lib/gitfleet/storage, filesystem storage only) and /tmp,
# which are volumes. Nothing runs through a shell: the command is the binary (`worker`, `producer serve`, ...).
ARG BUILDER=docker.io/library/rust:1.95-slim-bookworm
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make cmake pkg-config perl libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY shared shared
COPY infra infra
COPY worker worker
COPY producer producer
COPY tests tests
COPY migrations migrations
COPY schemas schemas
RUN cargo build --release --locked -p gitfleet-worker -p gitfleet-producer --bins \
 && install -D -m 0755 -t /out/usr/local/bin target/release/worker target/release/producer \
 && install -d -m 0755 -o 10001 -g 10001 /out/var/lib/gitfleet/git /out/var/lib/gitfleet/storage

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/*
COPY --from=build /out/ /
ENV GITFLEET_GIT_ROOT=/var/lib/gitfleet/git \
    GITFLEET_STORAGE_ROOT=/var/lib/gitfleet/storage \
    GITFLEET_LOG_FORMAT=json \
    HOME=/var/lib/gitfleet
USER 10001:10001
WORKDIR /var/lib/gitfleet
VOLUME ["/var/lib/gitfleet/git", "/var/lib/gitfleet/storage"]
EXPOSE 8080 9090
CMD ["worker"]
