#!/usr/bin/env bash
# Private generation vs maximum sequence length (msl 64, 128, 256, 512) for vanilla, MPCformer, THE-X and MERGE.
# Resumable: finished points (benchmark/results/vary_msl/points/*.json) are skipped. Extra flags go to
# `python -m benchmark.sweep msl` (see --help); they also override the defaults below. The defaults are the paper's
# setting (GPT-2-base geometry, every token); to fit a CPU in minutes shrink it, e.g.
#   scripts/vary_msl.sh --layers 4 --d-model 256 --heads 4 --vocab 4096 --max-new-tokens 3 --out /tmp/msl
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m benchmark.sweep msl --methods vanilla mpcformer thex merge \
    --msl 64 128 256 512 --prefix-len 4 --weights private --provider ttp "$@"
