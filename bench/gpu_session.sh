#!/usr/bin/env bash
# The GPU part on a lent machine (the device tool), prepared so no device time goes to typing. Two calls, each
# well inside the tool's 10-minute limit per command; make the second right after the first, while the machine
# is still warm (no second start-up, and the build is kept):
#
#   call 1, correctness (expected ~5 min, stage limits add up to 8.7 min): build + checks + tests
#     run(command="RMIX_FAST_COMMIT=<sha> CALL=1 bash bench/gpu_session.sh", timeout_s=600)
#   call 2, speed (expected ~8 min, limits 9 min): build (skipped when call 1's is there) + the benchmarks
#     run(command="RMIX_FAST_COMMIT=<sha> CALL=2 bash bench/gpu_session.sh", timeout_s=600)
#
# (RMIX_FAST_COMMIT: the commit being run, for the JSON files; the machine's copy of the tree has no .git.)
#
#   STAGES="checks" bash bench/gpu_session.sh   # any subset of: build checks tests bench_rmix bench_blend_regions
#                                               #   bench_sage bench_blend_sources bench_step bench_step_adautomix
#
# A session's device budget (15 min, start-up included) holds both calls only just; if it is short, call 2 can
# leave out bench_step (STAGES="build bench_rmix bench_blend_regions bench_sage bench_blend_sources"). Expected times on an H100/H200:
# build ~1–1.5 min (16 jobs, sm_90 only); checks ~2.5 min (bench/gpu_checks.py: seven probes in child processes,
# --budget 220 s); tests ~1.5 min; bench_rmix ~3 min; bench_blend_regions ~1 min; bench_sage ~0.5 min;
# bench_blend_sources ~0.3 min (estimated, not yet run on a GPU); bench_step ~2 min (RL-Mix's PPO update at the authors' 1000-step rollout included); bench_step_adautomix
# ~0.7 min (estimated: about 9 vanilla steps per round).
#
# A stage that runs out of time is reported and the next one still runs. The op benchmarks write their JSON
# after every case and gpu_checks.py after every probe, so one cut short still brings back what it finished
# (marked "complete": false). Everything lands under $OUT (the device tool brings it back); the last lines
# printed are a summary, one line per GPU check among them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rmix-gpu-out}
mkdir -p "$OUT"
CALL=${CALL:-1}
case "$CALL" in
  1) default_stages="build checks tests" ;;
  2) default_stages="build bench_rmix bench_blend_regions bench_sage bench_blend_sources bench_step bench_step_adautomix" ;;
  all) default_stages="build checks tests bench_rmix bench_blend_regions bench_sage bench_blend_sources bench_step bench_step_adautomix" ;;
  *) echo "CALL must be 1, 2 or all, got '$CALL'" >&2; exit 2 ;;
esac
STAGES=${STAGES-$default_stages}
PY=${PY:-python3}
# The package is not installed there: import it from this checkout (and its freshly built _C).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
note() { summary+=("$1"); echo "== $1"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }
cpp_on_cuda() { $PY -c "import rmix_fast, sys; sys.exit(not rmix_fast.available_backends('cuda')['cpp'].available)" 2>/dev/null; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" >"$OUT/versions.txt" 2>&1
note "call $CALL, stages: $STAGES; versions: $(tr '\n' ' ' <"$OUT/versions.txt")"

if wants build; then
  # Skipped when this machine already built these very sources (call 2 after call 1 on a warm machine).
  stamp=$(cat setup.py csrc/sources.txt $(find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) | sort) | sha1sum | cut -c1-12)
  if [[ -f build/csrc.sha1 && "$(cat build/csrc.sha1)" == "$stamp" ]] && cpp_on_cuda; then
    note "build skipped: the extension of these sources ($stamp) is built and runs on cuda"
  else
    # Hopper only: sm_90 machine code, no PTX JIT at start-up.
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 RMIX_FAST_REQUIRE_EXT=1 \
      timeout 120 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1
    rc=$?
    [[ $rc == 0 ]] && mkdir -p build && echo "$stamp" >build/csrc.sha1
    note "build rc=$rc ($(grep -c 'error' "$OUT/build.log") lines mention error)"
  fi
fi
$PY - <<'EOF' >"$OUT/backends.txt" 2>&1
import rmix_fast
for name, info in rmix_fast.available_backends("cuda").items():
    print(f"{name}: {'yes' if info.available else 'no'} ({info.reason}; max_grid {info.max_grid})")
EOF
note "backends on cuda: $(tr '\n' ';' <"$OUT/backends.txt")"

if wants checks; then
  # The probes only a GPU answers (issue 14), each in its own process with its own time limit: an illegal memory
  # access takes down one probe, not the stage. One line per probe; details in gpu-checks.json.
  timeout 250 $PY bench/gpu_checks.py --device cuda --budget 220 --out "$OUT/gpu-checks.json" \
    >"$OUT/gpu_checks.log" 2>&1
  note "gpu checks rc=$?: $(tail -1 "$OUT/gpu_checks.log")"
  while IFS= read -r line; do summary+=("   $line"); done < <(grep '^gpu-check ' "$OUT/gpu_checks.log")
fi

if wants tests; then
  # Every backend against the reference on CUDA tensors (Triton compiled, not interpreted; cpp's CUDA kernel).
  timeout 150 $PY -m pytest -q -x -p no:cacheprovider tests/ops tests/mixers -m "not slow" \
    >"$OUT/pytest-gpu.log" 2>&1
  note "gpu tests rc=$?: $(tail -1 "$OUT/pytest-gpu.log")"
fi

if wants bench_rmix; then
  timeout 130 $PY bench/bench_rmix.py --device cuda --reps 20 --out "$OUT/rmix-gpu" >"$OUT/bench_rmix.log" 2>&1
  note "bench_rmix rc=$?"
fi

if wants bench_blend_regions; then
  timeout 57 $PY bench/bench_blend_regions.py --device cuda --reps 15 --regions mixup cutmix:8 rmix:4 \
    --out "$OUT/blend_regions-gpu" >"$OUT/bench_blend_regions.log" 2>&1
  note "bench_blend_regions rc=$?"
fi

if wants bench_sage; then
  # The SAGE op against the published loop, triton and the baseline only (the reference at 224 px would add an
  # estimated ~25 s). The baseline is timed where its predicted peak is under 4 GB: at CIFAR (0.09 GB); at 224 px it
  # needs ~30 GB and (estimated) ~1 s a call, so the run records that wall ("paper_status") instead of a time.
  timeout 37 $PY bench/bench_sage.py --device cuda --reps 10 --providers triton paper --paper-max-gb 4 \
    --out "$OUT/sage-gpu" >"$OUT/bench_sage.log" 2>&1
  note "bench_sage rc=$?"
fi

if wants bench_blend_sources; then
  # AdAutoMix's multi-source mix against the published ops, triton and the baseline only (the default cases:
  # CIFAR 100x3x32x32 N = 3 and ImageNet 64x3x224x224 N = 2, fp32 / bf16, both layouts).
  timeout 30 $PY bench/bench_blend_sources.py --device cuda --reps 10 --providers triton published \
    --out "$OUT/blend_sources-gpu" >"$OUT/bench_blend_sources.log" 2>&1
  note "bench_blend_sources rc=$?"
fi

if wants bench_step; then
  timeout 121 $PY bench/bench_step.py --device cuda --reps 15 --agreement-steps 300 --agreement-images 2000 256 \
    --methods vanilla cutmix paper rmix_fast rmix_fast_half rmix_amortised rlmix sage --out "$OUT/step-gpu" >"$OUT/bench_step.log" 2>&1
  note "bench_step rc=$?"
fi

if wants bench_step_adautomix; then
  # AdAutoMix's step beside vanilla and R-Mix in one run (its own stage: about 5x vanilla a step, faithful)
  timeout 45 $PY bench/bench_step.py --device cuda --reps 8 --warmup 2 --agreement \
    --methods vanilla rmix_fast adautomix adautomix_reuse --out "$OUT/step-adautomix-gpu" \
    >"$OUT/bench_step_adautomix.log" 2>&1
  note "bench_step_adautomix rc=$?"
fi

# The tables for bench/README.md (full figures are in the JSON files under $OUT).
if compgen -G "$OUT/*.json" >/dev/null; then
  $PY bench/report.py "$OUT"/*.json >"$OUT/report.md" 2>&1
fi
echo
for line in "${summary[@]}"; do echo "$line"; done
grep -h -A12 '^| goal' "$OUT/report.md" 2>/dev/null | head -14
grep -h 'x) <-\|rlmix:\|agreement' "$OUT/bench_step.log" "$OUT/bench_step_adautomix.log" 2>/dev/null
