#!/usr/bin/env bash
# Stage 1: fine-tune one model family on the three tasks (e2e, webnlg, multiwoz).
#   scripts/finetune.sh [--model gpt2|t5|bart] [--dp] [extra nlg.finetune args...]
# Data: $MPCGEN_DATA_DIR, or pass --data-dir DIR among the extra args. Outputs: stage1_ckpts/<task>-<model>[-dp]/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
model=gpt2
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --model=*) model="${1#*=}"; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
for task in e2e webnlg multiwoz; do
  echo "== $task / $model" >&2
  "$PY" -m nlg.finetune --task "$task" --model "$model" ${extra[@]+"${extra[@]}"}
done
