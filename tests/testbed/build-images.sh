#!/usr/bin/env bash
# Build every test image from Debian packages (no image is pulled from anywhere) and push the
# application images to the local registry. Idempotent and cached: a root filesystem is only
# rebuilt when its package list changes, and docker build reuses its layer cache.
#
# Images (all names are in images.env, which tests read too):
#   $REGISTRY/stackops/app:v1, :v2, :v3, :broken (/health fails), :latest (= v2)
#   (each app version runs its own Alembic migrations at start: v1 0001, v2 0002, v3 0003; broken 0002)
#   $REGISTRY/stackops/postgres:15 (bookworm's), :13 (bullseye's) and :17 (trixie's): the oldest and
#   newest PostgreSQL the README names, $REGISTRY/stackops/mariadb:10.11, $REGISTRY/stackops/caddy:2.6,
#   $REGISTRY/stackops/busybox:1
#   stackops-testbed/testhost:latest (Docker-in-Docker host for Molecule and fleets)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/testbed/lib.sh
. "$here/lib.sh"
# shellcheck source=tests/testbed/images.env
. "$here/images.env"

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
CACHE_DIR=$STATE_DIR/debs
export DOCKER_BUILDKIT=0  # the classic builder resolves FROM against local images only

# Package lists of the root filesystems (Debian minbase; bookworm unless ROOTFS_SUITE says otherwise).
declare -A ROOTFS_PACKAGES=(
    [python]="python3 python3-psycopg2 python3-pymysql python3-sqlalchemy python3-alembic ca-certificates"
    [postgres]="postgresql-15 postgresql-client-15 ca-certificates"
    [postgres13]="postgresql-13 postgresql-client-13 ca-certificates"
    [postgres17]="postgresql-17 postgresql-client-17 ca-certificates"
    [mariadb]="mariadb-server mariadb-client ca-certificates"
    [caddy]="caddy ca-certificates wget"
    [testhost]="docker.io python3 python3-docker python3-requests iptables ca-certificates procps kmod openssh-server"
)
declare -A ROOTFS_SUITE=([postgres13]=bullseye [postgres17]=trixie)

rootfs_image() {  # rootfs_image FLAVOR: build (once per package list) and print the image name
    local flavor=$1 packages=${ROOTFS_PACKAGES[$1]} suite=${ROOTFS_SUITE[$1]:-$SUITE} key image dir
    key=$(printf '%s|%s|%s|v2' "$suite" "$flavor" "$packages" | sha256sum | cut -c1-12)
    image="stackops-testbed/rootfs-$flavor:$key"
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "rootfs $flavor: cached ($image)"
        echo "$image"
        return
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/rootfs-$flavor.XXXXXX")
    mkdir -p "$CACHE_DIR/$flavor"
    log "rootfs $flavor: debootstrap ($packages)"
    local t0=$SECONDS
    debootstrap --variant=minbase --cache-dir="$CACHE_DIR/$flavor" \
        --include="${packages// /,}" "$suite" "$dir" "$MIRROR" >"$dir.log" 2>&1 || {
        tail -n 20 "$dir.log" >&2
        rm -rf "$dir"
        die "debootstrap of the $flavor root filesystem failed (log above)"
    }
    # Keep images small: no package cache, lists, docs or man pages.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
    tar -C "$dir" -c . | docker import - "$image" >/dev/null
    rm -rf "$dir" "$dir.log"
    log "rootfs $flavor: built in $((SECONDS - t0)) s"
    echo "$image"
}

build() {  # build TAG CONTEXT [docker build args...]
    local tag=$1 context=$2
    shift 2
    local out
    out=$(docker build -q -t "$tag" "$@" "$context" 2>&1) || {
        printf '%s\n' "$out" >&2
        die "docker build of $tag failed (output above)"
    }
}

push() {
    docker push -q "$1" >/dev/null || die "docker push of $1 to the local registry failed"
}

build_all() {
    local python postgres postgres13 postgres17 mariadb caddy testhost ctx
    # The debootstraps are independent and mostly wait on downloads: run them side by side,
    # then ask again for the names (cached by then).
    local flavor pids=()
    for flavor in python postgres postgres13 postgres17 mariadb caddy testhost; do
        rootfs_image "$flavor" >/dev/null &
        pids+=($!)
    done
    for flavor in "${pids[@]}"; do
        wait "$flavor" || die "a root filesystem build failed (see above)"
    done
    python=$(rootfs_image python)
    postgres=$(rootfs_image postgres)
    postgres13=$(rootfs_image postgres13)
    postgres17=$(rootfs_image postgres17)
    mariadb=$(rootfs_image mariadb)
    caddy=$(rootfs_image caddy)
    testhost=$(rootfs_image testhost)

    local version head
    for version in v1:0001 v2:0002 v3:0003; do
        head=${version#*:}
        version=${version%:*}
        build "$APP_IMAGE:$version" "$here/images/app" --build-arg "BASE=$python" --build-arg "APP_VERSION=$version" \
            --build-arg "APP_SCHEMA_HEAD=$head"
    done
    build "$APP_IMAGE:broken" "$here/images/app" --build-arg "BASE=$python" --build-arg APP_VERSION=broken \
        --build-arg APP_SCHEMA_HEAD=0002 --build-arg APP_FAIL_HEALTH=1
    docker tag "$APP_IMAGE:v2" "$APP_IMAGE:latest"
    build "$POSTGRES_IMAGE" "$here/images/postgres" --build-arg "BASE=$postgres"
    build "$POSTGRES13_IMAGE" "$here/images/postgres" --build-arg "BASE=$postgres13"
    build "$POSTGRES17_IMAGE" "$here/images/postgres" --build-arg "BASE=$postgres17"
    build "$MARIADB_IMAGE" "$here/images/mariadb" --build-arg "BASE=$mariadb"
    build "$CADDY_IMAGE" "$here/images/caddy" --build-arg "BASE=$caddy"

    ctx=$(mktemp -d)
    cp "$here/images/busybox/Dockerfile" "$ctx/"
    cp /bin/busybox "$ctx/busybox"
    build "$BUSYBOX_IMAGE" "$ctx"
    rm -rf "$ctx"

    ctx=$(mktemp -d)
    cp "$here/images/testhost/Dockerfile" "$here/images/testhost/entrypoint.sh" "$ctx/"
    cp /usr/libexec/docker/cli-plugins/docker-compose "$ctx/docker-compose"
    build "$TESTHOST_IMAGE" "$ctx" --build-arg "BASE=$testhost"
    rm -rf "$ctx"

    local image
    for image in "$APP_IMAGE:v1" "$APP_IMAGE:v2" "$APP_IMAGE:v3" "$APP_IMAGE:broken" "$APP_IMAGE:latest" \
        "$POSTGRES_IMAGE" "$MARIADB_IMAGE" "$CADDY_IMAGE" "$BUSYBOX_IMAGE"; do
        push "$image"
    done
    log "images ready: app v1/v2/v3/broken, postgres, mariadb, caddy, busybox pushed to $REGISTRY; $TESTHOST_IMAGE local"
}

build_all
