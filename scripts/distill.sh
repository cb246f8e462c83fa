#!/usr/bin/env bash
# Stage 2: distil the stage-1 teachers of the three tasks into one student preset.
#   scripts/distill.sh [--preset merge|mpcformer|mpcformer-2relu|thex|merge-er-only|merge-mm-only] [--model gpt2]
#                      [extra distill.run args, e.g. --max-minutes 30]
# Teachers: stage1_ckpts/<task>-<model>/ (skipped with a warning when missing). Outputs:
# stage2_ckpts/<task>-<model>-<preset>/, then the plaintext evaluation of each student (nlg.evaluate, test split).
# Set EVAL_LIMIT=N to evaluate on the first N sources only, SKIP_EVAL=1 to skip evaluation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
preset=merge
model=gpt2
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --preset=*) preset="${1#*=}"; shift ;;
    --model) model="$2"; shift 2 ;;
    --model=*) model="${1#*=}"; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
for task in e2e_nlg web_nlg multiwoz_nlg; do
  teacher="stage1_ckpts/$task-$model"
  if [[ ! -f "$teacher/training_args.json" ]]; then
    echo "== $task: no teacher at $teacher, skipped" >&2
    continue
  fi
  out="stage2_ckpts/$task-$model-$preset"
  echo "== $task / $preset from $teacher -> $out" >&2
  "$PY" -m distill.run --teacher "$teacher" --preset "$preset" --out "$out" ${extra[@]+"${extra[@]}"}
  if [[ -z "${SKIP_EVAL:-}" ]]; then
    "$PY" -m nlg.evaluate --ckpt "$out" --split test ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --no-progress
  fi
done
