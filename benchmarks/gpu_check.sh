#!/usr/bin/env bash
# The GPU tables of docs/PERFORMANCE.md (issue 12) in one run, on a machine with an NVIDIA GPU (H100/H200 class):
#
#   ANCHOR=/work/shared/anchor bash benchmarks/gpu_check.sh [OUT_DIR]      # from the repository root, ~10 min
#
# Steps, each writing its output under OUT_DIR (default outputs/benchmarks/gpu), the cheapest and most telling first:
#   1. compiled == eager on CUDA with TF32 off, CUDA graphs included (tests/test_speed.py -k cuda)
#   2. train step vs torchvision's prototype, crestereo_base 384x512 batch 2, 10 updates, fp32 and bf16, alternating,
#      stereo_exp with its defaults (compiled, CUDA graphs) and with speed.compile=false (benchmarks.anchor)
#   3. the same step as the trainer runs it, against the bf16 / fp32 matmul ceiling (benchmarks.train_step)
#   4. raft_stereo_realtime inference at 384x512, bf16, 7 updates: frames/s eager and compiled (benchmarks.inference)
#   5. the loop: the recipe on full-size replicas via torchrun + NCCL on every GPU, data_wait_share (benchmarks.loop)
# ANCHOR: the folder of torchvision's prototype (its tools/install_into_venv.sh); the prototype goes into a copy of
# torchvision under OUT_DIR, the venv is not modified. Without ANCHOR step 2 compares compiled and eager only.
set -uo pipefail
OUT=${1:-outputs/benchmarks/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
GPUS=$(nvidia-smi -L | wc -l)
{ nvidia-smi; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/machine.txt" 2>&1
step() { echo "=== $1 ($(date +%T))"; }

step "1 compiled == eager on CUDA"
timeout 420 python -m pytest tests/test_speed.py -k cuda -q -p no:cacheprovider 2>&1 | tail -n 15 | tee "$OUT/1_test_speed_cuda.txt"

step "2 train step vs the prototype"
PROTOTYPE_FLAG=--no-prototype PROTOTYPE_PATH=
if [ -n "${ANCHOR:-}" ] && [ -f "$ANCHOR/tools/install_into_venv.sh" ]; then
  TV=$(python -c "import torchvision, os; print(os.path.dirname(torchvision.__file__))")
  mkdir -p "$OUT/tvsite" && cp -r "$TV" "$TV.libs" "$OUT/tvsite/" 2>/dev/null
  if PYTHONPATH="$OUT/tvsite:$PYTHONPATH" bash "$ANCHOR/tools/install_into_venv.sh" python > "$OUT/2_install.txt" 2>&1
  then PROTOTYPE_FLAG= PROTOTYPE_PATH="$OUT/tvsite:"
  else echo "prototype not installed (see $OUT/2_install.txt): compiled vs eager only"
  fi
fi
PYTHONPATH="$PROTOTYPE_PATH$PYTHONPATH" timeout 600 python -m benchmarks.anchor --device cuda --crop 384x512 --batch-size 2 --iters 10 --precisions fp32,bf16 \
  --variants default speed.compile=false --warmup 4 --repeats 10 $PROTOTYPE_FLAG --out "$OUT/2_anchor.json" \
  2>&1 | grep -v Warning | tail -n 12 | tee "$OUT/2_anchor.txt"

step "3 train step against the matmul ceiling"
timeout 480 python -m benchmarks.train_step --device cuda --models crestereo_base --crops 384x512 --batch-size 2 \
  --precisions fp32,bf16 --warmup 4 --repeats 10 --out "$OUT/3_train_step.json" 2>&1 | tail -n 6 | tee "$OUT/3_train_step.txt"

step "4 raft_stereo_realtime inference"
timeout 360 python -m benchmarks.inference --device cuda --models raft_stereo_realtime --size 384x512 --iters 7 \
  --precisions bf16 --compile false,true --warmup 5 --repeats 30 --out "$OUT/4_inference.json" 2>&1 | tail -n 5 \
  | tee "$OUT/4_inference.txt"

step "5 the loop on replicas, $GPUS GPU(s), NCCL"
timeout 600 python -m benchmarks.loop --device cuda --nproc "$GPUS" --steps 200 --log-every 20 \
  --out "$OUT/5_loop.json" > "$OUT/5_loop.log" 2>&1
tail -n 4 "$OUT/5_loop.log"
step "done: $OUT"
