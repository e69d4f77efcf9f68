#!/usr/bin/env bash
# N local CPU processes (127.0.0.1 coordinator, gloo collectives), each with D fake devices: a multi-host run
# on one machine. Arguments after the fourth are passed to every process (config overrides).
#   launch/local_multiprocess.sh CONFIG WORKDIR [NUM_PROCESSES=2] [DEVICES_PER_PROCESS=2] [--config.KEY=VALUE ...]
#   launch/local_multiprocess.sh configs/pretrain.py:smoke /tmp/mp_smoke 2 2 --config.total_steps=4
set -euo pipefail
CONFIG=${1:?config, e.g. configs/pretrain.py:smoke}
WORKDIR=${2:?workdir}
NUM=${3:-2}
DEVICES=${4:-2}
shift $(($# < 4 ? $# : 4))
PY=${PY:-.venv/bin/python}
cd "$(dirname "$0")/.."
mkdir -p "$(dirname "$WORKDIR")"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < NUM; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$DEVICES NML_JAX_DISTRIBUTED=1 \
    NML_JAX_COORDINATOR=127.0.0.1:$PORT NML_JAX_NUM_PROCESSES=$NUM NML_JAX_PROCESS_ID=$i \
    "$PY" -m nml_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "logs: $WORKDIR.process*.log (exit $status)"
exit $status
