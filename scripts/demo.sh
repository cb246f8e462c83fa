#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job end to end on real E2E data, small enough for a laptop CPU:
#   1. fine-tune a small GPT-2-architecture teacher from scratch (BPE tokenizer trained on the E2E training split);
#   2. evaluate it on E2E test meaning representations (BLEU, NIST, ROUGE-L, chrF++, slot error rate).
# Data: --data-dir / $MPCGEN_DATA_DIR, else ../shared/data beside the repository.
# Usage: scripts/demo.sh [--out DIR] [--steps N] [--limit N]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=out/demo
steps=400
limit=30
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --data-dir) export MPCGEN_DATA_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
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
