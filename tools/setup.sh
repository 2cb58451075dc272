#!/usr/bin/env bash
# Install what pylvs needs into two virtual environments in the checkout:
#   .venv       the machine's CPython
#   .venv-pypy  Debian's PyPy 3.9 (the faster interpreter on packet paths)
# Safe to run again: it only adds what is missing. Needs root for apt-get.
# With --bench, also the baselines `python -m bench` compares against
# (HAProxy, nginx and wrk from Debian) and pyinstrument for bench/profile.py.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v pypy3 >/dev/null || need+=(pypy3)
pypy3 -c 'import venv, ensurepip' 2>/dev/null || need+=(pypy3-venv)
# The live data plane and its tests: namespaces and links (iproute2), the
# director's host guard (nftables), offload switches (ethtool), the lab's
# client and trace (curl, tcpdump), VRRP between a pair of directors (keepalived).
for tool in ip:iproute2 nft:nftables ethtool:ethtool curl:curl tcpdump:tcpdump keepalived:keepalived; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ "${1:-}" = "--bench" ]; then
    for tool in haproxy:haproxy nginx:nginx-light wrk:wrk; do
        command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
    done
fi
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Prometheus exporter that reads `lvs daemon --procfs` (tests/test_metrics_e2e.py runs it on
# loopback). Debian's package starts a service on :9100 where systemd runs: one we installed
# only for the tests is stopped and disabled again.
if ! command -v prometheus-node-exporter >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    [ ${#need[@]} -gt 0 ] || apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus-node-exporter >/dev/null
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus-node-exporter >/dev/null 2>&1 || true
    fi
fi

make_venv() {  # interpreter, directory
    if [ ! -x "$2/bin/python" ]; then
        "$1" -m venv "$2"
    fi
    # tomli: lvs sim reads TOML workloads with it before Python 3.11 (tomllib after)
    if ! "$2/bin/python" -c 'import sys, scapy, prometheus_client, pytest, hypothesis, lvs
sys.version_info >= (3, 11) or __import__("tomli")' 2>/dev/null \
            || [ ! -x "$2/bin/lvsadm" ]; then
        "$2/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$2/bin/python" -m pip install -q -e '.[test]'
    fi
}
make_venv python3 .venv
make_venv pypy3 .venv-pypy
# lvs sim's plots: matplotlib has wheels for CPython; under PyPy lvs sim writes all but the plots.
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install -q matplotlib
if [ "${1:-}" = "--bench" ]; then
    # bench/profile.py's profiler (CPython; it falls back to cProfile without it)
    .venv/bin/python -c 'import pyinstrument' 2>/dev/null || .venv/bin/python -m pip install -q pyinstrument
fi
