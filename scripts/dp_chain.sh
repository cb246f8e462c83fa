#!/usr/bin/env bash
# From DP training to cheap private serving: a DP-SGD teacher's weights may be published (its guarantee covers its
# training data), so it can be served with public weights while the prompt stays secret. This script takes a DP
# teacher and
#   1. writes distillation pairs from public inputs only (scripts/public_distill_data.py: E2E MRs from the published
#      schema, public venue names, texts by the teacher), so the student keeps the teacher's guarantee;
#   2. distils a `lite` student on them (distill.run --train-file);
#   3. scores teacher and student on the E2E test set;
#   4. generates privately from the first test MRs with the student's weights private and public, and writes each
#      run's texts and per-token cost.
#   scripts/dp_chain.sh --teacher stage1_ckpts/e2e_nlg-gpt2-dp [--out stage2_ckpts/dp-chain] [--pairs N]
#                       [--student-minutes M] [--prompts K] [--dry-run]
# Outputs under --out: pairs.jsonl, student/, teacher and student metrics (beside each model), generate-{private,public}.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"

teacher=""
out="stage2_ckpts/dp-chain"
pairs=2000
minutes=15
prompts=5
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --teacher) teacher="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --pairs) pairs="$2"; shift 2 ;;
    --student-minutes) minutes="$2"; shift 2 ;;
    --prompts) prompts="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$teacher" ]] || { echo "--teacher DIR is required (a DP-trained stage-1 checkpoint)" >&2; exit 2; }
if [[ $dry == 0 ]]; then
  [[ -f "$teacher/training_args.json" ]] || { echo "$teacher: not a stage-1 checkpoint" >&2; exit 2; }
  grep -q '"dp_enabled": true' "$teacher/training_args.json" \
    || echo "warning: $teacher was not trained with --dp; its weights carry no guarantee" >&2
fi

run() {
  echo "+ $*" >&2
  if [[ $dry == 0 ]]; then "$@"; fi
}

run mkdir -p "$out"
run "$PY" scripts/public_distill_data.py --teacher "$teacher" --n "$pairs" --out "$out/pairs.jsonl"
run "$PY" -m distill.run --teacher "$teacher" --preset lite --lite-range high --train-file "$out/pairs.jsonl" \
  --holdout-percent 5 --max-minutes "$minutes" --num-threads 1 --batch-size 16 --lr 2e-4 --eval-every 100 \
  --ce-weight 0.5 --resume no --out "$out/student"
run "$PY" -m nlg.evaluate --ckpt "$teacher" --split test --batch-size 64 --num-threads 1
run "$PY" -m nlg.evaluate --ckpt "$out/student" --split test --batch-size 64 --num-threads 1
# The first K test MRs as the client's prompts (python, not head: the CSV quotes MRs that hold commas).
mrs="$out/prompts.txt"
if [[ $dry == 0 ]]; then
  "$PY" -c "import sys; from mpcgen.data import load_grouped; \
print('\n'.join(ex.source for ex in load_grouped('e2e', 'test')[:int(sys.argv[1])]))" "$prompts" > "$mrs"
fi
for weights in private public; do
  if [[ $dry == 0 ]]; then
    "$PY" -m mpcgen.generate --model "$out/student" --input-file "$mrs" --max-new-tokens 64 --provider ttp \
      --weights "$weights" --decoding client --json --no-progress | tail -n 1 > "$out/generate-$weights.json"
  else
    echo "+ $PY -m mpcgen.generate --model $out/student --input-file $mrs --max-new-tokens 64 --provider ttp" \
      "--weights $weights --decoding client --json --no-progress > $out/generate-$weights.json" >&2
  fi
done
