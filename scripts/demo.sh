#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job end to end on real E2E data, small enough for a laptop CPU:
#   1. fine-tune a small GPT-2-architecture teacher from scratch (BPE tokenizer trained on the E2E training split);
#   2. evaluate it on E2E test meaning representations (BLEU, NIST, ROUGE-L, chrF++, slot error rate);
#   3. distil it into an MPC-friendly `lite` student (quadratic activations, centred affine norms folded into the
#      linears, 2Quad attention with a cheap Newton reciprocal: content-aware, so it copies the restaurant's name)
#      and evaluate it the way it decodes privately;
#   4. generate text privately for 3 E2E test MRs: the student's weights (server) and the MRs (client) stay secret,
#      two-party CrypTen on local processes; prints the teacher's plaintext text, then the private text (client-side
#      token choice, then secure-argmax tokens) with its time, rounds and bytes per token.
# Data: --data-dir / $MPCGEN_DATA_DIR, else ../shared/data beside the repository.
# Usage: scripts/demo.sh [--out DIR] [--steps N] [--distill-steps N] [--limit N]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=out/demo
steps=400
distill_steps=200
limit=30
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --distill-steps) distill_steps=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --data-dir) export MPCGEN_DATA_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
data=${MPCGEN_DATA_DIR:-$root/../shared/data}
if [ ! -d "$data/e2e" ]; then
  echo "demo.sh: the E2E data was not found at $data." >&2
  echo "Point MPCGEN_DATA_DIR (or --data-dir) at the folder that holds e2e/, webnlg/ and multiwoz/." >&2
  exit 2
fi
export MPCGEN_DATA_DIR=$data
scripts/setup.sh
py=.venv/bin/python
echo "== stage 1: fine-tune a small GPT-2 teacher on E2E ($steps steps)"
$py -m nlg.finetune --task e2e --model gpt2 --init scratch --size tiny --max-steps "$steps" --out "$out/teacher"
echo "== stage 1: evaluate it on $limit E2E test MRs"
$py -m nlg.evaluate --ckpt "$out/teacher" --split test --limit "$limit"
echo "== stage 2: distil the teacher into a lite student ($distill_steps steps)"
$py -m distill.run --teacher "$out/teacher" --preset lite --max-steps "$distill_steps" --eval-every 100 \
    --limit-val 200 --resume no --out "$out/lite"
echo "== stage 2: evaluate the student on $limit E2E test MRs (greedy, as it decodes privately)"
$py -m nlg.evaluate --ckpt "$out/lite" --split test --limit "$limit"
echo "== private generation: 3 E2E test MRs, server (student weights) and client (MRs) as separate processes"
$py - "$out/prompts.txt" <<'PY'
import sys
from mpcgen.data import load_grouped
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.writelines(ex.source + "\n" for ex in load_grouped("e2e", "test")[:3])
PY
echo "-- the teacher in plaintext (the reference the private texts are compared with)"
$py -m mpcgen.generate --model "$out/teacher" --input-file "$out/prompts.txt" --max-new-tokens 24 --plaintext \
    --decoding client --no-progress
echo "-- the student privately, client-side token choice (the client sees each step's logits and picks the token)"
$py -m mpcgen.generate --model "$out/lite" --input-file "$out/prompts.txt" --max-new-tokens 24 --provider ttp \
    --weights private --decoding client
echo "-- the same student with token decoding (secure argmax + one-hot lookup each step: the client learns only the"
echo "   tokens, for more rounds per token)"
$py -m mpcgen.generate --model "$out/lite" --input-file "$out/prompts.txt" --max-new-tokens 24 --provider ttp \
    --weights private --decoding tokens
