#!/usr/bin/env bash
# DP-SGD on E2E after public pre-training, the recipe of docs/results.md (sessions 12-13):
#   1. public E2E-format pairs: MRs from the published schema, venue names public or made up from public words,
#      texts from hand-written templates (scripts/public_distill_data.py --realiser template): no private data;
#   2. a public model (--model) trained on them from scratch, tokenizer included (nlg.finetune --train-file), names and
#      landmarks delexicalised (--delex e2e: the client restores them, so no model has to spell them);
#   3. DP-SGD fine-tuning of it on the E2E training set: LoRA, 160 Poisson batches of 512 in chunks of 64, ghost
#      clipping, bf16 forwards, the PRV accountant, delta ~ 1/(2N);
#   4. test scores of the public model and of the DP model.
#   scripts/dp_e2e.sh [--model gpt2|t5|bart] [--out stage1_ckpts/e2e_nlg-MODEL-dp-delex]
#                     [--public stage1_ckpts/e2e_template-MODEL-delex] [--epsilon 8] [--dp-steps 160] [--lr 3e-3]
#                     [--dp-minutes 90] [--public-minutes 15] [--pairs 40000] [--dry-run]
# An existing public model (--public DIR with model.safetensors) is reused; delete it to retrain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"

model=gpt2
out=""
public=""
lr=3e-3
pairs_file="public/e2e-template.jsonl"
epsilon=8
steps=160
dp_minutes=90
public_minutes=15
pairs=40000
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --public) public="$2"; shift 2 ;;
    --epsilon) epsilon="$2"; shift 2 ;;
    --dp-steps) steps="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --dp-minutes) dp_minutes="$2"; shift 2 ;;
    --public-minutes) public_minutes="$2"; shift 2 ;;
    --pairs) pairs="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$model" in gpt2|t5|bart) ;; *) echo "--model must be gpt2, t5 or bart, not $model" >&2; exit 2 ;; esac
out="${out:-stage1_ckpts/e2e_nlg-$model-dp-delex}"
public="${public:-stage1_ckpts/e2e_template-$model-delex}"
BF16=()
if grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null; then BF16=(--bf16); fi

run() {
  echo "+ $*" >&2
  if [[ $dry == 0 ]]; then "$@"; fi
}

if [[ $dry == 1 || ! -f "$public/model.safetensors" ]]; then
  run "$PY" scripts/public_distill_data.py --realiser template --n "$pairs" --composed-names 0.8 --out "$pairs_file"
  run "$PY" -m nlg.finetune --task e2e --train-file "$pairs_file" --delex e2e --model "$model" --init scratch --size small \
    --num-threads 1 ${BF16[@]+"${BF16[@]}"} --max-minutes "$public_minutes" --eval-every 500 --resume no --out "$public"
fi
run "$PY" -m nlg.evaluate --ckpt "$public" --split test --batch-size 64 --num-threads 1
# delta 1.19e-5 ~ 1/(2N), N = 42,061 E2E training pairs.
run "$PY" -m nlg.finetune --task e2e --delex e2e --model "$model" --init pretrained --name-or-path "$public" --dp \
  ${BF16[@]+"${BF16[@]}"} --target-epsilon "$epsilon" --delta 1.19e-5 --accountant prv --lora --lora-r 32 \
  --lora-alpha 64 --batch-size 512 --dp-physical-batch-size 64 --lr "$lr" --max-steps "$steps" \
  --max-minutes "$dp_minutes" --eval-every 20 --num-threads 1 --resume no --out "$out"
run "$PY" -m nlg.evaluate --ckpt "$out" --split test --batch-size 64 --num-threads 1
