#!/usr/bin/env bash
# Stage 1: fine-tune one model family on the three tasks (e2e, webnlg, multiwoz), or reproduce the recipe table.
#   scripts/finetune.sh [--model gpt2|t5|bart] [--dp] [extra nlg.finetune args...]
#   scripts/finetune.sh --table [--only TASK-MODEL]... [--dry-run] [extra nlg.finetune args...]
# --table trains every cell of docs/results.md's stage-1 table with its recipe (one core each, from scratch, each
# followed by its test-set evaluation); --only picks cells (e.g. --only e2e-bart), --dry-run prints the commands.
# Data: $MPCGEN_DATA_DIR, or pass --data-dir DIR among the extra args. Outputs: stage1_ckpts/<task>-<model>[-dp]/
# (plain mode: nlg.finetune's default folder; --table: stage1_ckpts/<task>_nlg-<model>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"

# The recipes: cell -> legs separated by ';' (a later leg resumes the earlier one's folder with a new time budget).
# Every figure and its measured steps are in docs/results.md; cells not yet trained to their bar say so there.
declare -A RECIPE=(
  [e2e-gpt2]="--max-minutes 55"
  [e2e-t5]="--max-minutes 55 --eval-every 500 --delex e2e"
  [e2e-bart]="--max-minutes 55 --eval-every 500"
  [webnlg-gpt2]="--max-length 512 --max-minutes 55 --group-by-length --delex webnlg"
  [webnlg-t5]="--max-length 320 --max-minutes 55 --eval-every 500 --group-by-length --delex webnlg"
  [webnlg-bart]="--max-length 320 --max-minutes 55 --eval-every 500 --group-by-length --delex webnlg"
  [multiwoz-gpt2]="--max-minutes 36 --delex multiwoz-all"
  [multiwoz-t5]="--max-minutes 45 --eval-every 500 --delex multiwoz-all"
  [multiwoz-bart]="--max-minutes 45 --eval-every 500 --delex multiwoz-all"
)
COMMON=(--init scratch --size small --num-threads 1)
# bfloat16 autocast where the CPU has it natively (~0.7 s per GPT-2 step); emulated it is ~60x slower than float32.
if grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null; then COMMON+=(--bf16); fi
CELLS=(e2e-gpt2 e2e-t5 e2e-bart webnlg-gpt2 webnlg-t5 webnlg-bart multiwoz-gpt2 multiwoz-t5 multiwoz-bart)
declare -A TASK_DIR=([e2e]=e2e_nlg [webnlg]=web_nlg [multiwoz]=multiwoz_nlg)

model=gpt2
table=0
dry=0
only=()
extra=()
data=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --model=*) model="${1#*=}"; shift ;;
    --table) table=1; shift ;;
    --only) only+=("$2"); shift 2 ;;
    --dry-run) dry=1; shift ;;
    --data-dir|--data_dir) data=(--data-dir "$2"); shift 2 ;;
    --data-dir=*|--data_dir=*) data=(--data-dir "${1#*=}"); shift ;;
    *) extra+=("$1"); shift ;;
  esac
done

run() {
  echo "+ $*" >&2
  if [[ $dry == 0 ]]; then "$@"; fi
}

if [[ $table == 0 ]]; then
  for task in e2e webnlg multiwoz; do
    echo "== $task / $model" >&2
    run "$PY" -m nlg.finetune --task "$task" --model "$model" ${data[@]+"${data[@]}"} ${extra[@]+"${extra[@]}"}
  done
  exit 0
fi

if [[ ${#only[@]} -gt 0 ]]; then
  for cell in "${only[@]}"; do
    [[ -n "${RECIPE[$cell]+x}" ]] || { echo "unknown cell '$cell'; choose from: ${CELLS[*]}" >&2; exit 2; }
  done
  CELLS=("${only[@]}")
fi
for cell in "${CELLS[@]}"; do
  task="${cell%-*}"
  fam="${cell#*-}"
  out="stage1_ckpts/${TASK_DIR[$task]}-$fam"
  IFS=';' read -ra legs <<< "${RECIPE[$cell]}"
  first=1
  for leg in "${legs[@]}"; do
    read -ra args <<< "$leg"
    # The first leg starts afresh (an old folder of another recipe would be refused or mixed in).
    resume=(); [[ $first == 1 ]] && resume=(--resume no)
    echo "== $cell" >&2
    run "$PY" -m nlg.finetune --task "$task" --model "$fam" "${COMMON[@]}" "${args[@]}" ${resume[@]+"${resume[@]}"} \
      --out "$out" ${data[@]+"${data[@]}"} ${extra[@]+"${extra[@]}"}
    first=0
  done
  run "$PY" -m nlg.evaluate --ckpt "$out" --split test --batch-size 64 --num-threads 1 ${data[@]+"${data[@]}"}
done
