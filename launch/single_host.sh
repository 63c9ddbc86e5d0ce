#!/usr/bin/env bash
# Single host, every local accelerator (all GPUs of the machine, or CPU).
#
#   launch/single_host.sh configs/protocol2.py runs/protocol2 \
#       --config.init.backbone_weights=weights/resnet50.safetensors \
#       --config.data.roots.davis2017=/data/DAVIS --config.data.roots.youtube_vos2018=/data/YouTubeVOS
#
# One process drives all local devices: the mesh's `data` axis spans them and the global
# batch is split over it, so it must be a multiple of the GPU count (default: 1 clip per
# GPU, the paper's one clip per step on one GPU; pass --config.train.global_batch_size=N
# after the workdir to change it). Running the same command again resumes from the
# workdir's latest checkpoint; Ctrl-C / SIGTERM saves before exiting.
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [--config.field=value ...]}
workdir=${2:?usage: $0 CONFIG WORKDIR [--config.field=value ...]}
shift 2
cd "$(dirname "$0")/.."
num_devices=$(python -c 'import jax; print(jax.device_count())')
# Keep XLA from grabbing 75% of GPU memory up front when something else shares the GPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m munet_jax.train --config="$config" --workdir="$workdir" \
    --config.train.global_batch_size="$num_devices" --config.distributed.mode=never "$@"
