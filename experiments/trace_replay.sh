#!/usr/bin/env bash
# Policies x real network traces x server loads on the real socket runtime (device process -> shaped
# TCP link -> edge-server process), as one Hydra multirun with the joblib launcher; then the sweep's
# summary table and plots with splitcomp-report. Every job is an MLflow run under one parent run.
#
#   bash experiments/trace_replay.sh --quick          # 2 traces x 2 loads x 5 policies, ~6 min
#   bash experiments/trace_replay.sh                  # 5 traces x 3 loads x 5 policies
#   bash experiments/trace_replay.sh --quick tracking.uri=http://HOST:5000 hydra.launcher.n_jobs=4
#
# Extra arguments are Hydra overrides for every job (tracking.* ones also reach the report).
# The traces are the held-out test traces of bench_policies.py (the dynamic policy's settings were
# chosen on its tuning traces): one 3G, two 4G, one 5G and one WiFi trace.
# Requests arrive once a second (arrivals=periodic), so every policy of a scenario sees the same
# request start times on the same stretch of trace, and the oracle is a per-request lower bound.
# The device is 10x slower than this machine (device.slowdown=10, as in paper_grid.py), so that
# offloading can pay; the default workload (EfficientNet-Lite0 fitted on Fashion-MNIST, 224 px).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
if [[ "${1:-}" == "--quick" ]]; then mode=quick; shift; fi

experiment="trace_replay_${mode}"
policies="dynamic,device_only,server_only,best_static,oracle"
if [[ $mode == quick ]]; then
  channels="lte_driving,hsdpa_tram"
  loads="none,batch"
  sizes=(dataset.limit=8 channel.duration=30)
  jobs=2
else
  channels="lte_driving,att_lte_driving,hsdpa_tram,nr5g_lte_fallback,wifi_walk13"
  loads="none,batch,clients"
  sizes=(dataset.limit=100 channel.duration=120)
  jobs=2
fi

tracking=() jobless=()
for arg in "$@"; do
  if [[ $arg == tracking.* ]]; then tracking+=("$arg"); fi
  if [[ $arg != hydra.* ]]; then jobless+=("$arg"); fi
done

start=$(date +%s)
# Profile once before the sweep, so the parallel jobs find the profiles in the cache instead of
# each measuring them at the same time.
splitcomp-profile device.slowdown=10 tracking.experiment="${experiment}_profiles" "${jobless[@]}" > /dev/null

# The sweep's order follows the overrides: load, then trace, then policy, so the five policies of a
# scenario run one after the other and a sweep stopped early leaves whole scenarios behind.
splitcomp-run -m hydra/launcher=joblib hydra.launcher.n_jobs="$jobs" \
  server_load="$loads" channel="$channels" policy="$policies" \
  arrivals=periodic arrivals.interval_s=1.0 device.slowdown=10 compare_with=[] runtime.progress=false \
  "${sizes[@]}" \
  tracking.experiment="$experiment" "$@"

splitcomp-report tracking.experiment="$experiment" "${tracking[@]}"
echo "trace replay ($mode) took $(( $(date +%s) - start )) s"
