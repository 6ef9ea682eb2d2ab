#!/usr/bin/env bash
# An MLflow tracking server backed by PostgreSQL, with proxied artifacts in a folder: what parallel
# sweeps (many jobs, many machines) log to. Runs, params and metrics go to a PostgreSQL cluster of
# its own under DIR/postgres; artifacts to DIR/artifacts, uploaded through the server, so the jobs
# need nothing but HTTP access to it.
#
#   bash experiments/tracking_server.sh start DIR [PORT [HOST]]   # prints the tracking URI (also in DIR/uri)
#   bash experiments/tracking_server.sh stop DIR                  # the data stay in DIR for the next start
#
#   export MLFLOW_TRACKING_URI=$(cat DIR/uri)     # or tracking.uri=... on each command
#   splitcomp-run -m hydra/launcher=joblib hydra.launcher.n_jobs=4 policy=dynamic,oracle ...
#   splitcomp-report tracking.experiment=...
#
# PORT defaults to a free one, HOST to 127.0.0.1 (0.0.0.0 serves other machines too; MLflow then
# answers requests addressed to localhost and private addresses only). The database listens on
# 127.0.0.1 alone. PostgreSQL (Debian package postgresql) refuses to run as root: as root, the
# database runs as the user postgres, which must be able to reach DIR. Its password is random, kept
# in DIR/postgres.password and DIR/postgres.env (mode 600) and handed to the server through the
# environment, not its command line. MLFLOW_WORKERS sets the server's worker processes (default 2).
set -euo pipefail
PYTHON=${PYTHON:-python3}

usage() { echo "usage: $0 start DIR [PORT [HOST]] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
command=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
pgdata=$dir/postgres

pg_bin() {  # the newest PostgreSQL server binaries (Debian keeps them out of PATH)
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [[ -z $found ]]; then
    found=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
  fi
  if [[ ! -x $found/pg_ctl ]]; then
    echo "error: PostgreSQL is not installed; run 'apt-get install postgresql' (Debian/Ubuntu)" >&2
    exit 1
  fi
  echo "$found"
}

as_db_user() {  # run a PostgreSQL command as the user that owns the database
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

healthy() {  # URL: whether an MLflow server answers there
  "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$1" \
    2>/dev/null
}

wait_for_health() {  # URL PID: until the server answers /health, or it exits
  for _ in $(seq 600); do
    if healthy "$1"; then return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  echo "error: the MLflow server did not start; see $dir/mlflow.log" >&2
  tail -5 "$dir/mlflow.log" >&2
  return 1
}

start_postgres() {  # initialises the cluster once, then starts it on a free port of 127.0.0.1
  local bin=$1 db_port=$2
  if [[ ! -e $pgdata/PG_VERSION ]]; then
    mkdir -p "$pgdata"
    (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))' > "$dir/postgres.password")
    if [[ $(id -u) == 0 ]]; then
      chown postgres "$pgdata" "$dir/postgres.password"
      runuser -u postgres -- test -x "$pgdata" || {
        echo "error: the user postgres cannot reach $dir; pick a folder all users can enter (e.g. under /srv or /tmp)" >&2
        exit 1
      }
    fi
    as_db_user "$bin/initdb" -D "$pgdata" -U mlflow --pwfile "$dir/postgres.password" \
      --auth-host=scram-sha-256 --auth-local=scram-sha-256 > "$dir/initdb.log"
    # TCP on loopback only, no unix socket: nothing outside this host reaches the database
    printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" >> "$pgdata/postgresql.conf"
  fi
  as_db_user "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -o "-p $db_port" -w -t 60 start > /dev/null
  local password
  password=$(cat "$dir/postgres.password")
  (umask 077; echo "MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow:$password@127.0.0.1:$db_port/mlflow" \
    > "$dir/postgres.env")
  PGPASSWORD=$password "$PYTHON" - "$db_port" <<'EOF'
import os, sys
import psycopg2
connection = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="mlflow", dbname="postgres",
                              password=os.environ["PGPASSWORD"])
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
    if cursor.fetchone() is None:
        cursor.execute("CREATE DATABASE mlflow")
connection.close()
EOF
}

stop_server() {
  if [[ -e $dir/mlflow.pid ]]; then
    local pid
    pid=$(cat "$dir/mlflow.pid")
    if kill -TERM -- "-$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$dir/mlflow.pid"
  fi
  if [[ -e $pgdata/postmaster.pid ]]; then
    as_db_user "$(pg_bin)/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop > /dev/null || true
  fi
  rm -f "$dir/uri" "$dir/postgres.env"
}

case $command in
  start)
    if [[ -e $dir/uri ]] && healthy "$(cat "$dir/uri")"; then
      cat "$dir/uri"  # already running
      exit 0
    fi
    port=${3:-$(free_port)} host=${4:-127.0.0.1}
    bin=$(pg_bin)
    trap stop_server ERR
    start_postgres "$bin" "$(free_port)"
    mkdir -p "$dir/artifacts"
    # shellcheck disable=SC1091
    (set -a; . "$dir/postgres.env"; set +a
     MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
       exec setsid "$PYTHON" -m mlflow server --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}" \
       --artifacts-destination "$dir/artifacts" > "$dir/mlflow.log" 2>&1) &
    echo $! > "$dir/mlflow.pid"
    uri="http://127.0.0.1:$port"
    wait_for_health "$uri" "$(cat "$dir/mlflow.pid")"
    echo "$uri" > "$dir/uri"
    echo "$uri"
    ;;
  stop) stop_server ;;
  *) usage ;;
esac
