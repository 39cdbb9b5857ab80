#!/usr/bin/env bash
# Make this machine a Docker host for the test bed: Docker Engine from Debian, Compose v2 from
# Debian trixie (bookworm only ships Compose v1), dockerd started in the background when no
# daemon answers. Idempotent: every step checks first and does nothing when already done.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/testbed/lib.sh
. "$here/lib.sh"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "installing $1 needs root (apt-get). Run 'sudo make test', or install $1 yourself."
    fi
}

apt_updated=0
apt_install() {
    need_root "$*"
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_engine() {
    if command -v dockerd >/dev/null 2>&1; then
        return
    fi
    # iptables/ca-certificates are needed by bridge networking and pulls from the local registry.
    apt_install docker.io iptables ca-certificates
}

compose_ok() {
    local v
    v=$(docker compose version --short 2>/dev/null) || return 1
    version_ge "${v#v}" "$COMPOSE_MIN"
}

install_compose() {
    if compose_ok; then
        return
    fi
    need_root "Docker Compose v2"
    # Trixie's docker-compose is Compose v2 and only needs libc6 >= 2.34; fetch that one package
    # and unpack its CLI plugin, so nothing else on the machine moves to trixie.
    local list=/etc/apt/sources.list.d/stackops-trixie.sources
    if [ ! -f "$list" ]; then
        cat >"$list" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        cat >/etc/apt/preferences.d/stackops-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 50
PIN
        apt_updated=0
    fi
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq docker-compose/trixie)
    dpkg-deb -x "$tmp"/docker-compose_*.deb "$tmp/x"
    install -D -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" \
        /usr/libexec/docker/cli-plugins/docker-compose
    # The docker client on PATH may look in /usr/local/lib; link the plugin there too.
    install -d /usr/local/lib/docker/cli-plugins
    ln -sf /usr/libexec/docker/cli-plugins/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
    compose_ok || die "Compose v2 >= $COMPOSE_MIN is still not answering after install: $(docker compose version 2>&1)"
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    need_root "the Docker engine"
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: the daemon must outlive this script and the make that called it.
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    local pid=$! i
    for i in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            log "dockerd answers after ${i}s"
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "the Docker engine could not start: dockerd exited (log: $DOCKERD_LOG, last lines above). Integration tests need a running engine: fix the cause shown and run again."
        fi
        sleep 1
    done
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "the Docker engine did not start within 60 s; its log is $DOCKERD_LOG (last lines above). Integration tests need a running engine: fix the cause shown and run again."
}

install_tools() {
    # debootstrap builds the test images; zstd is what volume_backup prefers; docker-registry
    # serves them on 127.0.0.1:5000.
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v zstd >/dev/null 2>&1 || missing+=(zstd)
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)  # ansible-test sanity
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    command -v faketime >/dev/null 2>&1 || missing+=(faketime)  # a controller whose clock is off the host's
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

start_registry() {
    if curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$REGISTRY_DIR"
    cat >"$REGISTRY_DIR/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
CFG
    log "starting docker-registry on $REGISTRY"
    setsid docker-registry serve "$REGISTRY_DIR/config.yml" >"$REGISTRY_DIR/registry.log" 2>&1 </dev/null 9>&- &
    local i
    for i in $(seq 1 30); do
        if curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
            return
        fi
        sleep 0.5
    done
    tail -n 20 "$REGISTRY_DIR/registry.log" >&2 || true
    die "the local registry did not answer on $REGISTRY within 15 s (log: $REGISTRY_DIR/registry.log)"
}

install_engine
install_tools
start_engine
install_compose
start_registry
log "Docker $(docker version --format '{{.Server.Version}}'), Compose $(docker compose version --short), registry $REGISTRY"
