#!/usr/bin/env bash
# Cloud TPU VM (a single host like v5litepod-8, or a multi-host pod slice like v4-32):
# the same command on every worker.
#
#   launch/tpu_vm.sh my-tpu us-central2-b configs/protocol2.py /mnt/shared/runs/protocol2 \
#       --config.train.global_batch_size=32 \
#       --config.init.backbone_weights=/data/resnet50.safetensors \
#       --config.data.roots.davis2017=/data/DAVIS --config.data.roots.youtube_vos2018=/data/YouTubeVOS
#
# which runs, on all workers at once:
#   gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all \
#       --command="cd ~/munet_jax && python -m munet_jax.train --config=... --workdir=..."
# On a multi-host slice `jax.distributed.initialize()` (distributed.mode 'auto') finds the
# other workers from the TPU metadata; every worker feeds its rows of the global batch (a
# multiple of the total TPU core count). The workdir must be a POSIX path visible to all
# workers (e.g. a Filestore NFS mount; gs:// is not supported); the datasets must exist on every worker at the same
# path. Maintenance events and preemption send SIGTERM: the run saves and exits, and the
# same command resumes it. The checkout is expected at ~/munet_jax on every worker
# (e.g. `--worker=all --command="git clone ... munet_jax && pip install -e munet_jax"`).
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]}
zone=${2:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]}
config=${3:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]}
workdir=${4:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]}
shift 4
printf -v extra ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="cd ~/munet_jax && \
    python -m munet_jax.train --config=$(printf %q "$config") --workdir=$(printf %q "$workdir")$extra"
