#!/usr/bin/env bash
# Stage 2's frontier: distil every student preset from ONE teacher, score each the way it is served and measure its
# private cost per token, then put them on one table and plot (python -m distill.frontier).
#   scripts/frontier.sh --teacher stage1_ckpts/e2e_nlg-gpt2 [--only NAME]... [--scale F] [--lanes N] [--dry-run]
#                       [--out docs/frontier] [extra distill.run args...]
# The students train in --lanes parallel lanes (default 2, one thread each), each student followed by its own
# frontier scoring, so the last step (all rows together) only reads what the lanes measured. --scale multiplies
# every time budget (0.1 for a smoke run). Outputs: stage2_ckpts/frontier/<name>/, the --out folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"

# name -> minutes | distill.run arguments. The recipes and their figures are in docs/results.md ("Frontier").
# thex starts from the teacher's LayerNorm gains (--norm-init copy): with norms calibrated on the teacher's
# statistics its first training step was infinite on the session-10 teacher (KL 3.5e16).
declare -A RECIPE=(
  [lite]="30|--preset lite --lite-range high --ce-weight 0.5 --lr 2e-4"
  [lite-er]="15|--preset lite-er --lite-range high --ce-weight 0.5 --lr 2e-4"
  [mpcformer]="10|--preset mpcformer --lr 2e-4"
  [mpcformer-c23]="10|--preset mpcformer --constant-attention-layers 2,3 --lr 2e-4"
  [thex]="10|--preset thex --lr 3e-4 --norm-init copy"
  [merge]="10|--preset merge --lr 3e-4 --kl-weight 1.0 --er-unroll 2 --er-rollout-prob 0.75 --bf16"
  [merge-mm-only]="10|--preset merge-mm-only --lr 3e-4 --bf16"
)
# Longest first; each goes to the lane with the fewest minutes so far.
ORDER=(lite lite-er mpcformer merge thex mpcformer-c23 merge-mm-only)
COMMON=(--num-threads 1 --batch-size 16 --eval-every 200 --limit-val 300 --resume no)

teacher=""
out=docs/frontier
scale=1
lanes=2
dry=0
only=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --teacher) teacher="$2"; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --lanes) lanes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
[[ -n "$teacher" ]] || { echo "frontier.sh: --teacher DIR is required (see --help)" >&2; exit 2; }
[[ $dry == 1 || -f "$teacher/training_args.json" ]] || { echo "frontier.sh: no stage-1 teacher at $teacher" >&2; exit 2; }
if [[ ${#only[@]} -gt 0 ]]; then
  for name in "${only[@]}"; do
    [[ -n "${RECIPE[$name]+x}" ]] || { echo "unknown student '$name'; choose from: ${ORDER[*]}" >&2; exit 2; }
  done
  ORDER=("${only[@]}")
fi

run() {
  echo "+ $*" >&2
  if [[ $dry == 0 ]]; then "$@"; fi
}

student() {  # name: distil, then score and cost it (distill.frontier caches both beside the student and in $out)
  local name="$1" minutes args
  minutes="$(awk -v m="${RECIPE[$name]%%|*}" -v s="$scale" 'BEGIN { print m * s }')"
  read -ra args <<< "${RECIPE[$name]#*|}"
  run "$PY" -m distill.run --teacher "$teacher" "${args[@]}" "${COMMON[@]}" --max-minutes "$minutes" \
      --out "stage2_ckpts/frontier/$name" ${extra[@]+"${extra[@]}"} || return 1
  run "$PY" -m distill.frontier --teacher "$teacher" --students "stage2_ckpts/frontier/$name" \
      --names teacher "$name" --out "$out" || return 1
}

declare -a LANE_OF LOAD
for ((l = 0; l < lanes; l++)); do LOAD[$l]=0; done
for name in "${ORDER[@]}"; do
  best=0
  for ((l = 1; l < lanes; l++)); do ((LOAD[l] < LOAD[best])) && best=$l; done
  LANE_OF+=("$best")
  LOAD[$best]=$((LOAD[best] + ${RECIPE[$name]%%|*}))
done

lane() {  # a student that fails is reported and the lane goes on with the next one
  local i status=0
  for ((i = 0; i < ${#ORDER[@]}; i++)); do
    if [[ ${LANE_OF[$i]} == "$1" ]]; then
      student "${ORDER[$i]}" || { echo "frontier.sh: student ${ORDER[$i]} failed (see above)" >&2; status=1; }
    fi
  done
  return $status
}

pids=()
for ((l = 0; l < lanes; l++)); do
  if [[ $dry == 1 ]]; then lane "$l"; else lane "$l" & pids+=($!); fi
done
status=0
for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" || status=1; done
dirs=(); names=(teacher)
for name in "${ORDER[@]}"; do
  # The table holds the students that were distilled; a failed one is left out (and fails the script below).
  if [[ $dry == 1 || -f "stage2_ckpts/frontier/$name/model.safetensors" ]]; then
    dirs+=("stage2_ckpts/frontier/$name"); names+=("$name")
  fi
done
run "$PY" -m distill.frontier --teacher "$teacher" --students ${dirs[@]+"${dirs[@]}"} --names "${names[@]}" \
    --out "$out"
[[ $status == 0 ]] || { echo "frontier.sh: a student failed (see above); the table leaves it out" >&2; exit 1; }
