#!/bin/sh
# Without arguments, as the upstream image starts: the host's /proc and /sys where a stack mounts
# them at /host/proc and /host/sys, else the container's own (no collector fails on a missing path).
if [ "$#" -eq 0 ]; then
    for fs in proc sys; do
        if [ -d "/host/$fs" ]; then set -- "$@" "--path.${fs}fs=/host/$fs"; fi
    done
    set -- "$@" --no-collector.systemd
fi
exec /usr/bin/prometheus-node-exporter "$@"
