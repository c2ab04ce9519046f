#!/usr/bin/env bash
# Dense vs random mask vs HYDRA vs S2AP on digits at 90% sparsity, 3 seeds, with `s2ap run`.
# Every arm starts from the same pretraining recipe and is finetuned identically.
#   bash experiments/digits-arms.sh [OUT_DIR]        (~2 min per run on 2 quiet CPU cores)
set -euo pipefail
out=${1:-runs/digits-arms}
s2ap=${S2AP:-.venv/bin/s2ap}
declare -A arms=(
  [dense]="--set prune.epochs=0 --set finetune.epochs=0"
  [random]="--set prune.epochs=0 --set prune.score_init=random"
  [hydra]="--set prune.perturbation=none"
  [s2ap]=""
)
for seed in 0 1 2; do
  for arm in dense random hydra s2ap; do
    dir="$out/$arm-$seed"
    mode=--force
    [ -f "$dir/summary.json" ] && continue
    [ -f "$dir/checkpoint.pt" ] && mode=--resume
    # shellcheck disable=SC2086
    "$s2ap" run configs/run-digits.yaml --out "$dir" --quiet $mode \
      --set seed=$seed --set evaluate.autoattack=false ${arms[$arm]}
  done
done
python - "$out" <<'PY'
import json, statistics as st, sys
from pathlib import Path
root = Path(sys.argv[1])
for arm in ["dense", "random", "hydra", "s2ap"]:
    tests = [json.loads((root / f"{arm}-{s}" / "summary.json").read_text())["test"] for s in range(3)]
    clean = [100 * t["test_clean_acc"] for t in tests]
    pgd = [100 * t["test_pgd_acc"] for t in tests]
    print(f"{arm:7s} clean {st.mean(clean):.1f} ± {st.stdev(clean):.1f}   "
          f"PGD-20 {st.mean(pgd):.1f} ± {st.stdev(pgd):.1f}")
PY
