#!/bin/sh
# Docker-in-Docker test host: make the cgroup v1 controllers writable (they arrive read-only),
# start an inner dockerd under its own cgroup parent, wait for it, start sshd when asked, then stay up.
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
# Reached over SSH too when the test gives a public key (TESTHOST_AUTHORIZED_KEY): root logs in
# with that key only. The host keys are made here, so each host has its own.
if [ -n "${TESTHOST_AUTHORIZED_KEY:-}" ]; then
    mkdir -p /root/.ssh /run/sshd
    chmod 0700 /root/.ssh
    printf '%s\n' "$TESTHOST_AUTHORIZED_KEY" >/root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
    ssh-keygen -A >/dev/null
    /usr/sbin/sshd -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password -o UsePAM=no \
        -E /var/log/sshd.log || echo "testhost: sshd did not start" >&2
fi
exec sleep infinity
