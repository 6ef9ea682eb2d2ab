#!/usr/bin/env bash
# A real Ray cluster on this machine: a head node and worker nodes, each its own raylet started with
# `ray start`, so that the jobs of a sweep leave the launching process as they would on a cluster.
# Free ports, a small object store; every process it starts belongs to the process group of one
# `ray start --block`, which `stop` ends (no `ray stop`, which would end every Ray process of the
# user). A multi-node Ray cluster listens on the host's network address; to keep it off the
# network, start it (and the sweep) in a network namespace: experiments/netns.sh.
#
#   bash experiments/ray_cluster.sh start DIR [WORKERS [CPUS]]   # head + WORKERS nodes (default 1), CPUS each (1)
#   bash experiments/ray_cluster.sh stop DIR
#
# `start` prints the head's address (also in DIR/address); run a sweep against it with
#   RAY_ADDRESS=$(cat DIR/address) splitcomp-run -m hydra/launcher=ray_cluster ...
# The nodes run the Python of $PYTHON (default python3) with the current environment, so they
# import the splitcomp installed there, as every node of a real cluster would.
set -euo pipefail
PYTHON=${PYTHON:-python3}
export RAY_USAGE_STATS_ENABLED=0
STORE_BYTES=${RAY_OBJECT_STORE_BYTES:-80000000}   # Ray's minimum is 75 MB; jobs pass little through it

usage() { echo "usage: $0 start DIR [WORKERS [CPUS]] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
command=$1 dir=$2

free_ports() {  # N free TCP ports on 127.0.0.1
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

start_node() {  # NAME ARGS...: one `ray start --block` in a session of its own; waits until it runs
  local name=$1; shift
  setsid "$PYTHON" -m ray.scripts.scripts start --block --disable-usage-stats \
    --object-store-memory "$STORE_BYTES" "$@" > "$dir/$name.log" 2>&1 &
  echo $! > "$dir/$name.pid"
  for _ in $(seq 600); do
    if grep -q "Ray runtime started" "$dir/$name.log"; then return 0; fi
    if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "error: the Ray $name node did not start; see $dir/$name.log" >&2
  tail -5 "$dir/$name.log" >&2
  return 1
}

stop_cluster() {  # SIGTERM to every node's process group, SIGKILL to what is left after 3 s
  [[ -d $dir ]] || return 0
  local pidfile pids=()
  for pidfile in "$dir"/head.pid "$dir"/worker*.pid; do
    if [[ -e $pidfile ]]; then pids+=("$(cat "$pidfile")"); rm -f "$pidfile"; fi
  done
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local left=0
    for pid in "${pids[@]}"; do if kill -0 -- "-$pid" 2>/dev/null; then left=1; fi; done
    [[ $left == 1 ]] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  if [[ -e $dir/temp_dir ]]; then rm -rf "$(cat "$dir/temp_dir")" "$dir/temp_dir"; fi
}

case $command in
  start)
    workers=${3:-1} cpus=${4:-1}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Ray's unix sockets live under its temp dir, whose path must stay short (about 100 bytes).
    temp=$(mktemp -d /tmp/ray-XXXXXX)
    echo "$temp" > "$dir/temp_dir"
    read -r gcs client dashboard agent <<< "$(free_ports 4)"
    trap stop_cluster ERR
    start_node head --head --port "$gcs" --ray-client-server-port "$client" --include-dashboard false \
      --dashboard-port "$dashboard" --dashboard-agent-listen-port "$agent" --num-cpus "$cpus" --temp-dir "$temp"
    for i in $(seq "$workers"); do
      start_node "worker$i" --address "127.0.0.1:$gcs" --num-cpus "$cpus" \
        --dashboard-agent-listen-port "$(free_ports 1)"
    done
    echo "127.0.0.1:$gcs" > "$dir/address"
    echo "127.0.0.1:$gcs"
    ;;
  stop) stop_cluster ;;
  *) usage ;;
esac
