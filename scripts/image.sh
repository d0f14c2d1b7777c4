#!/usr/bin/env bash
# `make image`: builds the Dockerfile with buildah (chroot isolation: no daemon, no registry). No
# image registry is reachable here, so the two images the Dockerfile starts from are made locally first, once:
#   localhost/gitfleet-base:bookworm     Debian bookworm (minbase) by debootstrap from Debian's packages
#   localhost/gitfleet-builder:<rustc>   that base with the build's C dependencies and this machine's Rust toolchain
# and passed in as the build arguments BASE and BUILDER. The crate registry of this machine is mounted into the
# build, so crates are not downloaded again. Prints the image's name. IMAGE overrides it (default gitfleet:<version>).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[image] %s\n' "$*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${IMAGE:-localhost/gitfleet:$version}
# Chroot isolation: no runtime daemon, no network namespace to set up. Storage is the machine's default (overlay
# here), shared with podman, which runs the image in `make test-image`.
export BUILDAH_ISOLATION=chroot
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

exists() { buildah images --quiet "$1" >/dev/null 2>&1; }

base=localhost/gitfleet-base:bookworm
if ! exists "$base"; then
    log "making $base with debootstrap (a few minutes, once)"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=ca-certificates,libssl3,zlib1g bookworm "$root" "$mirror" >&2
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$root/etc/apt/sources.list"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*
    tar -C "$root" -cf "$root.tar" .
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$root.tar" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
    buildah commit --rm "$ctr" "$base" >/dev/null
    rm -f "$root.tar"
fi

toolchain=$(rustc --print sysroot)
rust=$(rustc --version | awk '{print $2}')
builder=localhost/gitfleet-builder:$rust-cmake
if ! exists "$builder"; then
    log "making $builder: $base with the build's C dependencies and the Rust toolchain at $toolchain"
    ctr=$(buildah from "$base")
    buildah run "$ctr" -- sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev make cmake pkg-config perl libssl-dev >/dev/null && rm -rf /var/lib/apt/lists/*'
    buildah copy "$ctr" "$toolchain" /usr/local/rust >/dev/null
    buildah config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env CARGO_HOME=/usr/local/cargo "$ctr"
    buildah commit --rm "$ctr" "$builder" >/dev/null
fi

log "building $image (a release build: 10 to 20 minutes on 2 cores)"
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
mkdir -p "$registry"
buildah bud --layers --build-arg "BASE=$base" --build-arg "BUILDER=$builder" \
    --volume "$registry:/usr/local/cargo/registry" -t "$image" . >&2
echo "$image"
