#!/usr/bin/env bash
# Two quickstart GLMC seeds of 10 epochs, trained three ways: in one process (--jobs 1), as two workers
# that each take every thread torch would (the old behaviour, forced with OMP_NUM_THREADS), and as two
# workers sharing the threads out (--jobs 2 as it is). Usage: bash bench.sh [SCRATCH_DIR]
set -uo pipefail
scratch=${1:-$(mktemp -d)}
lscpu | grep -E "^Model name|^CPU family|^Model:"
git rev-parse --short HEAD
threads=$(python -c "import torch; print(torch.get_num_threads())")
echo "torch threads $threads"
common=(--only GLMC --seeds 2 --set train.epochs=10 --quiet)
for label in jobs1 jobs2-every-thread jobs2-shared; do
  out=$scratch/$label
  rm -rf "$out"
  start=$(date +%s.%N)
  case $label in
    jobs1) glmc reproduce quickstart --output "$out" "${common[@]}" --jobs 1 > /dev/null ;;
    jobs2-every-thread) OMP_NUM_THREADS=$threads glmc reproduce quickstart --output "$out" "${common[@]}" --jobs 2 > /dev/null ;;
    jobs2-shared) glmc reproduce quickstart --output "$out" "${common[@]}" --jobs 2 > /dev/null ;;
  esac
  rc=$?
  end=$(date +%s.%N)
  top1=$(python -c "import json; print([row['top1_mean'] for row in json.load(open('$out/table.json'))['rows']])")
  echo "$label rc=$rc $(python -c "print(round($end - $start, 1))") s; top-1: $top1"
done
