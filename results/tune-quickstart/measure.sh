#!/usr/bin/env bash
# The measurement, from the repository root: a 20-trial study of GLMC on the quickstart data (validation set
# only), the rank agreement of early evaluations with the final one, then the tuned configuration and the quickstart
# preset each trained on the whole training set and tested once, with 3 seeds. Writes under $WORK (default scratch/tune).
set -euo pipefail
WORK=${WORK:-scratch/tune}
mkdir -p "$WORK"
/usr/bin/time -f "study wall %e s" glmc tune --preset quickstart --trials 20 --output "$WORK/study" --sampler-seed 0 --device cpu
python - "$WORK/study" > "$WORK/rank-agreement.json" <<'PY'
import json, sys, optuna
from glmc.tune import STUDY_NAME, rank_agreement
study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{sys.argv[1]}/study.db")
print(json.dumps({"trials": len(study.trials), "spearman_by_epoch": rank_agreement(study)}, indent=1))
PY
for seed in 0 1 2; do
    glmc train --config "$WORK/study/best.yaml" --seed "$seed" --device cpu --quiet --output "$WORK/tuned-s$seed"
    glmc train --preset quickstart --seed "$seed" --device cpu --quiet --output "$WORK/preset-s$seed"
done
