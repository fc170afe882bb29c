#!/usr/bin/env bash
# The method comparison on the embedded shapes data (issue 15): every arm x 3 seeds, two settings, through
# rmix-compare, two single-threaded runs at a time (about an hour on 2 cores). The same command again resumes
# a comparison cut short, and with --report-only only rebuilds the tables and plots.
#
#   bash bench/studies/shapes_methods.sh [OUT]        # default OUT: runs/shapes-methods
#
# Arms, as the R-Mix paper's CIFAR-100 table (Table 4) has them: the Vanilla, Input (Mixup), Manifold and
# CutMix rows come from Co-Mixup's table, i.e. that protocol (multistep lr 0.2, softmax BCE, crop padding 2,
# CutMix with probability 0.5: --preset comixup); CutMix+ and R-Mix run the R-Mix paper's OneCycle recipe
# (the default preset), CutMix+ being CutMix (p = 0.5) with only the scheduler changed. Vanilla also runs
# under the OneCycle recipe, to tell the protocol's effect from the method's.
#
# Settings: shapes-5k is rmix-train's shapes default (5000 training images, 32 px, small_cnn) for 12 epochs
# (600 steps); shapes-1k takes 1000 training images for 50 epochs (500 steps), where vanilla training
# overfits (train accuracy far above test). Nothing here was tuned to the results.
set -euo pipefail
OUT=${1:-runs/shapes-methods}
ARMS=(
  --method vanilla="--method vanilla"
  --method vanilla-comixup="--method vanilla --preset comixup"
  --method mixup-comixup="--method mixup --preset comixup"
  --method manifold-comixup="--method manifold --preset comixup"
  --method cutmix-comixup="--method cutmix --mix-prob 0.5 --preset comixup"
  --method cutmix+="--method cutmix --mix-prob 0.5"
  --method rmix="--method rmix"
)
# RL-Mix (issue 16): the authors' rollout is two epochs (1000 steps at 500 steps an epoch) in minibatches of a
# quarter of it; at this scale that is 100 / 25 steps (50 steps an epoch) and 20 / 5 (10 steps an epoch).
# Their 1000-step rollout would end after the last step here: the agent would never update.
RLMIX_5K=(--method rlmix="--method rlmix --agent-steps 100 --agent-minibatch 25")
RLMIX_1K=(--method rlmix="--method rlmix --agent-steps 20 --agent-minibatch 5")
# AdAutoMix (issue 18): the published CIFAR configuration (3 sources, beta 0.3, its EMA schedule over the run's
# steps) under this study's OneCycle recipe, as R-Mix: the method, not OpenMixup's protocol, is compared.
ADAUTOMIX=(--method adautomix="--method adautomix")
EXTRA=("${@:2}")  # e.g. --report-only
"${PY:-python}" -m rmix_fast.compare --out "$OUT/shapes-5k" "${ARMS[@]}" "${RLMIX_5K[@]}" "${ADAUTOMIX[@]}" --seeds 0 1 2 --parallel 2 \
  --threads 1 "${EXTRA[@]}" -- --dataset shapes --model small_cnn --epochs 12
"${PY:-python}" -m rmix_fast.compare --out "$OUT/shapes-1k" "${ARMS[@]}" "${RLMIX_1K[@]}" "${ADAUTOMIX[@]}" --seeds 0 1 2 --parallel 2 \
  --threads 1 "${EXTRA[@]}" -- --dataset shapes --model small_cnn --train-size 1000 --epochs 50
