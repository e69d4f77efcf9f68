#!/usr/bin/env bash
# TPU pod: create a TPU VM (if needed), copy the code, install, and start the same command on every worker,
# detached (nohup + setsid), so the run survives the ssh session; it restarts after a failure and resumes
# from the workdir's last checkpoint. Running this script again resumes a stopped run (e.g. after a
# preemption or a VM restart) and does nothing on a worker whose run is still going.
#   launch/tpu_pod.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh configs/pretrain_imagenet.py:noise=0.1 gs://my-bucket/in1k_n10 \
#     --config.data_dir=gs://my-bucket/tensorflow_datasets
#   TPU_NAME=nml-jax ZONE=us-central2-b TYPE=v4-32 MAX_RESTARTS=20 RESTART_DELAY_S=30 (defaults);
#   NML_JAX_DATA_DIR, when set here, is passed on.
# Follow worker 0:  gcloud compute tpus tpu-vm ssh nml-jax --zone us-central2-b --worker=0 \
#   --command 'tail -f ~/nml_jax/run.log'
# WORKDIR is a gs:// URL (gs://my-bucket/in1k_n10; the TPU VM's service account needs write access to it) or a
# path all workers share (NFS); data_dir may be a gs:// URL. jax.distributed.initialize() detects the pod by
# itself on TPU VMs.
set -euo pipefail
CONFIG=${1:?config}
WORKDIR=${2:?workdir: a gs:// URL or a filesystem all workers share}
shift 2
TPU=${TPU_NAME:-nml-jax}
ZONE=${ZONE:-us-central2-b}
TYPE=${TYPE:-v4-32}
MAX_RESTARTS=${MAX_RESTARTS:-20}
RESTART_DELAY_S=${RESTART_DELAY_S:-30}
cd "$(dirname "$0")/.."
if ! gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" > /dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version tpu-ubuntu2204-base
fi
tar czf /tmp/nml_jax_code.tgz --exclude=.venv --exclude=workdirs --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/nml_jax_code.tgz "$TPU":~/ --zone "$ZONE" --worker=all
# The run command, quoted word by word so overrides with spaces or brackets arrive intact.
RUN=$(printf '%q ' env NML_JAX_DISTRIBUTED=1 ${NML_JAX_DATA_DIR:+NML_JAX_DATA_DIR="$NML_JAX_DATA_DIR"} \
  .venv/bin/python -m nml_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/nml_jax && tar xzf ~/nml_jax_code.tgz -C ~/nml_jax && cd ~/nml_jax
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2')
  if [ -f run.pid ] && kill -0 \$(cat run.pid) 2> /dev/null; then echo 'already running'; exit 0; fi
  cat > run.sh << 'RUN_EOF'
for attempt in \$(seq 0 $MAX_RESTARTS); do
  echo \"nml_jax: start \$attempt at \$(date)\"
  $RUN && exit 0
  sleep $RESTART_DELAY_S  # Then every worker starts again and the run resumes from its last checkpoint.
done
exit 1
RUN_EOF
  nohup setsid bash run.sh >> run.log 2>&1 < /dev/null &
  echo \$! > run.pid
  echo \"started (pid \$(cat run.pid)); log: ~/nml_jax/run.log\"
"
