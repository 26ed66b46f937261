#!/usr/bin/env bash
# A two-node Ray cluster on one machine: a head and a worker node, each with its own raylet, so jobs really
# schedule across nodes (training workers, Ray Data tasks, Serve replicas) without a second machine.
#
#   cluster/local/two_nodes.sh start       # prints RAY_ADDRESS and the dashboard (job submission) address
#   ray job submit --address http://127.0.0.1:8266 --working-dir . -- \
#       python -m rayml run jobs/fraud_detection.yaml train.placement_strategy=SPREAD ...
#   cluster/local/two_nodes.sh stop        # stops only the two nodes this script started
#
# Settings (environment): RAYML_NODES_DIR (pids and logs; .rayml/two_nodes), RAYML_GCS_PORT (6390),
# RAYML_DASHBOARD_PORT (8266), RAYML_CLIENT_PORT (10091), RAYML_HEAD_CPUS (2), RAYML_WORKER_CPUS (2),
# RAYML_OBJECT_STORE_BYTES (500000000 per node), RAYML_RAY_TEMP_DIR (Ray's temp dirs go in <it>/head and
# <it>/worker; /tmp/rayml-two-nodes),
# RAYML_HEAD_AGENT_PORT (52375), RAYML_WORKER_AGENT_PORT (52376), RAYML_HEAD_METRICS_PORT (8091),
# RAYML_WORKER_METRICS_PORT (8092). Ports differ from Ray's defaults so this runs beside another local cluster.
set -euo pipefail

dir=${RAYML_NODES_DIR:-.rayml/two_nodes}
gcs_port=${RAYML_GCS_PORT:-6390}
dashboard_port=${RAYML_DASHBOARD_PORT:-8266}
ray_bin=${RAY_BIN:-ray}
# Each node gets its own Ray temp dir: nodes sharing one would share runtime_resources/, and the worker node's
# cleanup of a job's working_dir would delete it under the driver running on the head.
temp_root=${RAYML_RAY_TEMP_DIR:-/tmp/rayml-two-nodes}
common=(--block --node-ip-address=127.0.0.1 "--object-store-memory=${RAYML_OBJECT_STORE_BYTES:-500000000}")

wait_started() {  # LOG PID: until `ray start` reports the node up, or fail with its log
  local deadline=$((SECONDS + 180))
  until grep -q "Ray runtime started" "$1"; do
    if ! kill -0 "$2" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "ray start failed; its log ($1):" >&2
      tail -n 40 "$1" >&2
      return 1
    fi
    sleep 0.5
  done
}

start() {
  mkdir -p "$dir"
  if [ -f "$dir/head.pid" ] && kill -0 "$(cat "$dir/head.pid")" 2>/dev/null; then
    echo "already running (head pid $(cat "$dir/head.pid")); run '$0 stop' first" >&2
    return 1
  fi
  RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1} "$ray_bin" start --head "${common[@]}" \
    --temp-dir="$temp_root/head" --port="$gcs_port" --num-cpus="${RAYML_HEAD_CPUS:-2}" \
    --resources='{"rayml_head_node": 1}' \
    --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --include-dashboard=true \
    --ray-client-server-port="${RAYML_CLIENT_PORT:-10091}" \
    --dashboard-agent-listen-port="${RAYML_HEAD_AGENT_PORT:-52375}" \
    --metrics-export-port="${RAYML_HEAD_METRICS_PORT:-8091}" >"$dir/head.log" 2>&1 &
  echo $! >"$dir/head.pid"
  wait_started "$dir/head.log" "$(cat "$dir/head.pid")"

  "$ray_bin" start "${common[@]}" --temp-dir="$temp_root/worker" --address="127.0.0.1:$gcs_port" \
    --num-cpus="${RAYML_WORKER_CPUS:-2}" --resources='{"rayml_worker_node": 1}' \
    --dashboard-agent-listen-port="${RAYML_WORKER_AGENT_PORT:-52376}" \
    --metrics-export-port="${RAYML_WORKER_METRICS_PORT:-8092}" >"$dir/worker.log" 2>&1 &
  echo $! >"$dir/worker.pid"
  wait_started "$dir/worker.log" "$(cat "$dir/worker.pid")"

  echo "RAY_ADDRESS=127.0.0.1:$gcs_port"
  echo "dashboard and job submission: http://127.0.0.1:$dashboard_port"
}

stop() {
  local name pid
  for name in worker head; do  # `ray start --block` stops the processes it started when terminated
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$dir/$name.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
