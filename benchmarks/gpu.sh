#!/usr/bin/env bash
# The benchmark suite on one GPU machine, in as few calls as possible.
#
#   bash benchmarks/gpu.sh OUT_DIR [STEP ...]
#
# Runs the numbered steps (default: all, in this order) and writes every results file
# into OUT_DIR (the device tool's $OUT; copy them to benchmarks/results/ afterwards).
# Each step has its own time limit, so one slow compile cannot take the others with it;
# a step cut short leaves what it wrote, and a later call can run the remaining steps:
#   1 check       full model on the GPU (fp32, bf16) against the host CPU (benchmarks/gpu_check.py)
#   2 inference   480p, 1 object, 5 memory frames, bf16 + fp32 (the 200 FPS goal)
#   3 video       a 64-frame 480p video as one program (segment_video), bf16 + fp32
#   4 training    bf16 train step on 6x400x400 clips, per-device batch fitted to 72 GB (80 GB GPU)
#   5 parts       Enc-Q, Enc-R, MU-Layer, MSAM, memory read, decoder at 480p, bf16
#   6 memory      inference, 1 object, 1 and 20 memory frames, bf16 + fp32
#   7 objects3    inference, 3 objects, 1 / 5 / 20 memory frames, bf16 + fp32
#   8 training32  the fp32 train step, batch fitted likewise
#   9 read        inference, 1 object, 20 memory frames, bf16: the dense memory read ('auto' on GPU)
#                 against the blocked online softmax and the query-blocked read (model.memory_read),
#                 time and memory
#
# BENCH_EXTRA (environment) is appended to every benchmark command, e.g. a rehearsal on CPU:
#   BENCH_EXTRA="--tiny --size 64x96 --train_size 32x32" bash benchmarks/gpu.sh /tmp/out
# The GPU image has JAX, flax, optax, orbax and opencv but neither TensorFlow (not needed
# here) nor ml_collections: carry its wheel in .whl (README, "Benchmarks on a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [STEP ...]}
shift
steps=${*:-1 2 3 4 5 6 7 8 9}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
# Let the training batch use 90% of the card (JAX's default pool is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
log="$out/gpu-log.txt"
{
    date -u +"started %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    python3 -c "import jax, jaxlib, flax, optax, numpy; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())" 2>&1
} | tee -a "$log"

bench="python3 -m munet_jax.benchmark"
extra=${BENCH_EXTRA:-}
step() {  # step NUMBER NAME SECONDS COMMAND...
    local number=$1 name=$2 seconds=$3
    shift 3
    case " $steps " in *" $number "*) ;; *) return 0 ;; esac
    echo "== step $number $name (limit ${seconds} s): $*" | tee -a "$log"
    local start=$SECONDS
    timeout --signal=INT --kill-after=20 "$seconds" "$@" 2>&1 | tee -a "$log"
    echo "== step $number $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$log"
}
step 1 check 90 python3 benchmarks/gpu_check.py --json "$out/gpu-check.json"
step 2 inference 120 $bench inference --objects 1 --memory 5 --dtype bfloat16,float32 --repeats 50 --out "$out" $extra
step 3 video 120 $bench video --objects 1 --video_frames 64 --dtype bfloat16,float32 --repeats 5 --out "$out" $extra
step 4 training 240 $bench training --dtype bfloat16 --repeats 10 --out "$out" $extra
step 5 parts 120 $bench parts --objects 1 --dtype bfloat16 --repeats 20 --out "$out" $extra
step 6 memory 150 $bench inference --objects 1 --memory 1,20 --dtype bfloat16,float32 --repeats 30 --out "$out" $extra
step 7 objects3 200 $bench inference --objects 3 --memory 1,5,20 --dtype bfloat16,float32 --repeats 30 --out "$out" $extra
step 8 training32 240 $bench training --dtype float32 --repeats 5 --out "$out" $extra
step 9 read 120 $bench inference --objects 1 --memory 20 --dtype bfloat16 --memory_read dense,blocked,query_blocked \
    --repeats 30 --out "$out" $extra
date -u +"finished %Y-%m-%dT%H:%M:%SZ" | tee -a "$log"
