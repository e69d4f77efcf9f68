#!/usr/bin/env bash
# TPU pod: create a TPU VM, copy the code, set up, and run the same command on every worker.
#   launch/tpu_pod.sh CONFIG WORKDIR [TPU_NAME=nml-jax] [ZONE=us-central2-b] [TYPE=v4-32]
#   launch/tpu_pod.sh configs/pretrain_imagenet.py:noise=0.1 /mnt/shared/in1k_n10
# WORKDIR must be a POSIX path all workers share (NFS, or a bucket mounted with gcsfuse on every worker);
# stages write their files with plain file I/O. jax.distributed.initialize() detects the
# pod by itself on TPU VMs.
set -euo pipefail
CONFIG=${1:?config}
WORKDIR=${2:?workdir on a filesystem all workers share}
TPU=${3:-nml-jax}
ZONE=${4:-us-central2-b}
TYPE=${5:-v4-32}
cd "$(dirname "$0")/.."
if ! gcloud compute tpus tpu-vm describe "$TPU" --zone "$ZONE" > /dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version tpu-ubuntu2204-base
fi
tar czf /tmp/nml_jax_code.tgz --exclude=.venv --exclude=workdirs --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/nml_jax_code.tgz "$TPU":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/nml_jax && tar xzf ~/nml_jax_code.tgz -C ~/nml_jax && cd ~/nml_jax
  [ -d .venv ] || (python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2')
  NML_JAX_DISTRIBUTED=1 .venv/bin/python -m nml_jax.main --config='$CONFIG' --workdir='$WORKDIR'
"
