#!/usr/bin/env bash
# A Spark cluster on 127.0.0.1 from the installed pyspark: a standalone master, WORKERS workers (one core each)
# and the Thrift server (HiveServer2 protocol: hive://127.0.0.1:THRIFT_PORT/default) on that cluster.
#
#   bash scripts/spark.sh start   # starts them and waits until the Thrift server answers a query
#   bash scripts/spark.sh stop    # stops exactly what `start` started (by the pid files in SPARK_DIR)
#   bash scripts/spark.sh status
#
# Settings (environment): SPARK_DIR (state, logs, pid files, warehouse; default .spark in the checkout),
# SPARK_MASTER_PORT (7077), SPARK_THRIFT_PORT (10000), SPARK_WORKERS (2), SPARK_WORKER_MEMORY (1g),
# SPARK_WEBUI_PORT (8090; workers take the next ones), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
dir=${SPARK_DIR:-$PWD/.spark}
master_port=${SPARK_MASTER_PORT:-7077}
thrift_port=${SPARK_THRIFT_PORT:-10000}
workers=${SPARK_WORKERS:-2}
memory=${SPARK_WORKER_MEMORY:-1g}
webui=${SPARK_WEBUI_PORT:-8090}

spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME=$spark_home
export SPARK_LOG_DIR=$dir/logs SPARK_PID_DIR=$dir/pids SPARK_IDENT_STRING=audience-sync
unset SPARK_NO_DAEMONIZE  # set at all, it keeps a daemon in the foreground
daemon="$SPARK_HOME/sbin/spark-daemon.sh"
master_class=org.apache.spark.deploy.master.Master
worker_class=org.apache.spark.deploy.worker.Worker
thrift_class=org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
master_url="spark://127.0.0.1:$master_port"

answers() {  # the Thrift server runs a query
  "$python" - "$thrift_port" <<'EOF' >/dev/null 2>&1
import sys
from pyhive import hive
connection = hive.connect(host="127.0.0.1", port=int(sys.argv[1]), username="audience-sync")
cursor = connection.cursor()
cursor.execute("SELECT 1")
cursor.fetchall()
connection.close()
EOF
}

start() {
  command -v java >/dev/null || { echo "error: Java is not installed (Spark needs Java 17 or newer)" >&2; exit 1; }
  mkdir -p "$dir/logs" "$dir/pids" "$dir/warehouse" "$dir/derby"
  export SPARK_MASTER_HOST=127.0.0.1 SPARK_LOCAL_IP=127.0.0.1
  "$daemon" start "$master_class" 1 --host 127.0.0.1 --port "$master_port" --webui-port "$webui" >/dev/null
  for n in $(seq 1 "$workers"); do
    SPARK_WORKER_DIR="$dir/work-$n" "$daemon" start "$worker_class" "$n" --host 127.0.0.1 --cores 1 \
      --memory "$memory" --webui-port $((webui + n)) "$master_url" >/dev/null
  done
  "$daemon" submit "$thrift_class" 1 --master "$master_url" --name audience-sync-thrift \
    --conf spark.sql.warehouse.dir="$dir/warehouse" \
    --conf spark.driver.extraJavaOptions="-Dderby.system.home=$dir/derby" \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --conf spark.executor.cores=1 --conf spark.executor.memory=768m --conf spark.cores.max="$workers" \
    --conf spark.sql.shuffle.partitions="$((workers * 2))" --conf spark.ui.enabled=false \
    --hiveconf hive.server2.thrift.port="$thrift_port" --hiveconf hive.server2.thrift.bind.host=127.0.0.1 \
    >/dev/null
  for _ in $(seq 1 180); do  # bounded: a cold start takes 20-60 s on two cores
    if answers; then
      echo "spark: master $master_url, $workers workers, thrift hive://127.0.0.1:$thrift_port/default"
      return 0
    fi
    sleep 1
  done
  echo "error: the Thrift server did not answer within 180 s; see $dir/logs" >&2
  stop
  exit 1
}

stop() {
  "$daemon" stop "$thrift_class" 1 >/dev/null 2>&1 || true
  for n in $(seq 1 "$workers"); do "$daemon" stop "$worker_class" "$n" >/dev/null 2>&1 || true; done
  "$daemon" stop "$master_class" 1 >/dev/null 2>&1 || true
}

status() {
  for pid in "$dir"/pids/*.pid; do
    [ -e "$pid" ] || { echo "spark: not running"; return 0; }
    if kill -0 "$(cat "$pid")" 2>/dev/null; then echo "running: $(basename "$pid")"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
