#!/usr/bin/env bash
# The model, inference, training and benchmark tests on the oldest JAX stack setup.cfg allows
# (requirements/lower-bounds.txt: jax 0.11, as the GPU machines run it) and without TensorFlow,
# in a throwaway virtual environment (default /tmp/munet_jax-lower-bounds; VENV=... to choose).
# Not part of CI (11 minutes on 2 cores); run it after touching JAX APIs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/munet_jax-lower-bounds}
source scripts/find_python312.sh
if [ ! -x "$venv/bin/python" ]; then "$(find_python312)" -m venv "$venv"; fi
"$venv/bin/python" -m pip install -q -r requirements/lower-bounds.txt ml_collections numpy opencv-python-headless \
    pillow tqdm absl-py tensorboard safetensors pytest scipy
"$venv/bin/python" -m pip install -q --no-deps -e .
if "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
    echo "error: $venv has TensorFlow; this check is for the machines without it" >&2; exit 1
fi
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_munet.py tests/test_inference_engine.py tests/test_winograd.py tests/test_train_step.py \
    tests/test_benchmark.py tests/test_memory.py tests/test_memory_bank.py tests/test_mu_layer.py \
    tests/test_msam.py tests/test_decoder.py tests/test_resnet.py tests/test_aggregation.py tests/test_losses.py \
    tests/test_restore.py tests/test_segment.py tests/test_visualize.py tests/test_metrics_jf.py \
    tests/test_compilation_cache.py tests/test_conv_grad.py tests/test_max_pool.py "$@"
