#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one after the other, on this machine; prints the figures
# and keeps a copy in target/benchmarks.txt (BENCH_OUT to change). Needs root: the dataplane,
# daemon and packet-path benches commit rulesets in network namespaces they create. About
# 15 minutes on 2 cores. Nothing is asserted: these are measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
out=${BENCH_OUT:-target/benchmarks.txt}
mkdir -p "$(dirname "$out")"
{
    echo "# kube-nftpol benchmarks, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "## compile (no kernel)"
    cargo bench --locked --bench compile
    echo
    echo "## full and incremental apply, real kernel (private network namespace)"
    cargo bench --locked --bench dataplane
    echo
    echo "## memory of a daemon holding each cluster (initial load only)"
    for size in 1000x100 10000x1000 50000x5000; do
        BENCH_LOAD_ONLY=1 BENCH_PODS=${size%x*} BENCH_POLICIES=${size#*x} \
            cargo bench --locked --bench daemon_load
    done
    echo
    echo "## the daemon under load (10,000 pods, 1,000 policies)"
    cargo bench --locked --bench daemon_load
    echo
    echo "## packet path: no ruleset, kube-nftpol, a classic linear rendering"
    cargo bench --locked --bench packet_path
} 2>&1 | tee "$out"
