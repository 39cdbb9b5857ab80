#!/bin/sh
# Docker-in-Docker test host: make the cgroup v1 controllers writable (they arrive read-only),
# start an inner dockerd under its own cgroup parent, wait for it, then stay up.
set -u
if [ -d /sys/fs/cgroup ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    for dir in /sys/fs/cgroup/*/; do
        ctrl=$(basename "$dir")
        case "$ctrl" in unified) continue ;; esac
        opts=$ctrl
        case "$ctrl" in systemd) opts="none,name=systemd" ;; esac
        if umount "$dir" 2>/dev/null; then
            mount -t cgroup -o "$opts" cgroup "$dir" 2>/dev/null || echo "testhost: cannot remount cgroup $ctrl" >&2
        fi
    done
fi
dockerd --cgroup-parent=/stackops-inner --host=unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 &
i=0
while ! docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then
        echo "testhost: inner dockerd did not start" >&2
        tail -n 30 /var/log/dockerd.log >&2
        break
    fi
    sleep 1
done
exec sleep infinity
