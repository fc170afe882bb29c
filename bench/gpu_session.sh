#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool), prepared so no device time goes to typing: build the
# CUDA kernel of the "cpp" backend, check GPU correctness first, then run both op benchmarks and the step
# benchmark. Everything lands under $OUT (the device tool brings it back); the last lines printed are a summary.
#
#   run(command="bash bench/gpu_session.sh", timeout_s=600)
#   STAGES="bench_rmix" bash bench/gpu_session.sh   # a subset of: build tests bench_rmix bench_blend_regions bench_step
#
# Stage time limits add up to under 10 minutes (the device tool's per-call limit); a stage that runs out of
# time is reported and the next one still runs. The op benchmarks write their JSON after every case, so one
# cut short still brings back the cases it finished (marked "complete": false).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rmix-gpu-out}
mkdir -p "$OUT"
STAGES=${STAGES-"build tests bench_rmix bench_blend_regions bench_step"}
PY=${PY:-python3}
# The package is not installed there: import it from this checkout (and its freshly built _C).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
note() { summary+=("$1"); echo "== $1"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" >"$OUT/versions.txt" 2>&1
note "versions: $(tr '\n' ' ' <"$OUT/versions.txt")"

if wants build; then
  # Hopper only: sm_90 machine code, no PTX JIT at start-up.
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 RMIX_FAST_REQUIRE_EXT=1 \
    timeout 120 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1
  note "build rc=$? ($(grep -c 'error' "$OUT/build.log") lines mention error)"
fi
$PY - <<'EOF' >"$OUT/backends.txt" 2>&1
import rmix_fast
for name, info in rmix_fast.available_backends("cuda").items():
    print(f"{name}: {'yes' if info.available else 'no'} ({info.reason}; max_grid {info.max_grid})")
EOF
note "backends on cuda: $(tr '\n' ';' <"$OUT/backends.txt")"

if wants tests; then
  # Every backend against the reference on CUDA tensors (Triton compiled, not interpreted; cpp's CUDA kernel).
  timeout 90 $PY -m pytest -q -x -p no:cacheprovider tests/ops tests/mixers -m "not slow" \
    >"$OUT/pytest-gpu.log" 2>&1
  note "gpu tests rc=$?: $(tail -1 "$OUT/pytest-gpu.log")"
fi

if wants bench_rmix; then
  timeout 190 $PY bench/bench_rmix.py --device cuda --reps 20 --out "$OUT/rmix-gpu" >"$OUT/bench_rmix.log" 2>&1
  note "bench_rmix rc=$?"
fi

if wants bench_blend_regions; then
  timeout 80 $PY bench/bench_blend_regions.py --device cuda --reps 15 --regions mixup cutmix:8 rmix:4 \
    --out "$OUT/blend_regions-gpu" >"$OUT/bench_blend_regions.log" 2>&1
  note "bench_blend_regions rc=$?"
fi

if wants bench_step; then
  timeout 110 $PY bench/bench_step.py --device cuda --reps 15 --agreement-steps 300 --agreement-images 2000 256 \
    --out "$OUT/step-gpu" >"$OUT/bench_step.log" 2>&1
  note "bench_step rc=$?"
fi

# The tables for bench/README.md (full figures are in the JSON files under $OUT).
$PY bench/report.py "$OUT"/*.json >"$OUT/report.md" 2>&1
echo
for line in "${summary[@]}"; do echo "$line"; done
grep -h -A12 '^| goal' "$OUT/report.md" 2>/dev/null | head -14
grep -h 'x) <-\|agreement' "$OUT/bench_step.log" 2>/dev/null
