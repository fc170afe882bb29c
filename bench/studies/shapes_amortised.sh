#!/usr/bin/env bash
# Amortised saliency against the paper's fresh pass (issue 19): R-Mix with --saliency-source fresh (the
# paper's, the default) and amortised, and CutMix+ as the cost yardstick, under the protocol, settings and seeds
# of shapes_methods.sh (the R-Mix paper's OneCycle recipe; shapes-1k and shapes-5k; seeds 0-2), through
# rmix-compare, two single-threaded runs at a time. The same command again resumes; --report-only rebuilds
# the tables and plots.
#
#   bash bench/studies/shapes_amortised.sh [OUT]        # default OUT: runs/shapes-amortised
set -euo pipefail
OUT=${1:-runs/shapes-amortised}
ARMS=(
  --method cutmix+="--method cutmix --mix-prob 0.5"
  --method rmix="--method rmix"
  --method rmix-amortised="--method rmix --saliency-source amortised"
)
EXTRA=("${@:2}")  # e.g. --report-only
"${PY:-python}" -m rmix_fast.compare --out "$OUT/shapes-1k" "${ARMS[@]}" --seeds 0 1 2 --parallel 2 --threads 1 \
  "${EXTRA[@]}" -- --dataset shapes --model small_cnn --train-size 1000 --epochs 50
"${PY:-python}" -m rmix_fast.compare --out "$OUT/shapes-5k" "${ARMS[@]}" --seeds 0 1 2 --parallel 2 --threads 1 \
  "${EXTRA[@]}" -- --dataset shapes --model small_cnn --epochs 12
