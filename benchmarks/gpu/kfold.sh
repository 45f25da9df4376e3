#!/usr/bin/env bash
# The k-fold protocol on one GPU, its folds trained side by side: the data is generated and rendered once, each
# fold is `affectvlm train --fold k --folds K` in its own process, and `affectvlm evaluate --protocol kfold`
# then finds the finished folds and evaluates them (the README's "folds trained elsewhere" path).
#
#   benchmarks/gpu/kfold.sh OUT NAME [TRAINING OPTIONS...]
#
# Writes OUT/NAME.log (the folds' logs, then the protocol's table) and OUT/NAME.json (its evaluation.json).
# FOLDS (default 5), THREADS (CPU threads per fold, default 3) and CACHE (where generated data and caches go,
# default a new temporary folder; share it between calls to generate once) come from the environment.
set -euo pipefail
out=$(realpath "${1:?usage: kfold.sh OUT NAME [TRAINING OPTIONS...]}")
name=${2:?usage: kfold.sh OUT NAME [TRAINING OPTIONS...]}
shift 2
folds=${FOLDS:-5}
work=$(mktemp -d)
cache=${CACHE:-$work/cache}
log=$out/$name.log
collect_fold_logs() {
  for ((fold = 0; fold < folds; fold++)); do
    echo "--- fold $fold" >>"$log"
    cat "$work/fold-$fold.log" >>"$log" 2>/dev/null
  done
}

echo "generating and rendering once ($(date -u +%T))" >>"$log"
python3 -m affectvlm train --cache-dir "$cache" --out "$work/warm-up" --max-steps 1 --no-progress "$@" \
  >>"$log" 2>&1
# stopped at a time limit: the folds stop too, and their logs so far are kept
trap 'kill $(jobs -p) 2>/dev/null; collect_fold_logs; exit 124' TERM INT

echo "training $folds folds side by side ($(date -u +%T))" >>"$log"
for ((fold = 0; fold < folds; fold++)); do
  OMP_NUM_THREADS=${THREADS:-3} python3 -m affectvlm train --fold "$fold" --folds "$folds" --cache-dir "$cache" \
    --out "$work/protocol/fold-$fold" --no-progress "$@" >"$work/fold-$fold.log" 2>&1 &
done
failed=0
for fold_job in $(jobs -p); do wait "$fold_job" || failed=1; done
collect_fold_logs
trap - TERM INT
if ((failed)); then echo "a fold failed (see its log above)" >>"$log"; exit 1; fi
echo "evaluating ($(date -u +%T))" >>"$log"
python3 -m affectvlm evaluate --protocol kfold --folds "$folds" --cache-dir "$cache" --out "$work/protocol" "$@" \
  >>"$log" 2>&1
cp "$work/protocol/evaluation.json" "$out/$name.json"
echo "done ($(date -u +%T))" >>"$log"
