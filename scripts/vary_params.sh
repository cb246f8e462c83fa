#!/usr/bin/env bash
# Private generation vs model size: MERGE's encoder-decoder geometries (layers/d/heads 6/512/8, 12/768/12,
# 12/1024/16, 24/1024/16; --arch encoder-decoder, the default here) or the GPT-2 sizes (--arch decoder: small,
# medium, large, xl), for vanilla, MPCformer, THE-X and MERGE at msl 128. Resumable: finished points are skipped.
# Extra flags go to `python -m benchmark.sweep params` (see --help) and override the defaults below. To fit a CPU,
# shrink it, e.g.
#   scripts/vary_params.sh --layer-scale 0.25 --width-scale 0.25 --vocab 4096 --msl 32 --max-new-tokens 3
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m benchmark.sweep params --arch encoder-decoder \
    --methods vanilla mpcformer thex merge --msl 128 --prefix-len 4 --weights private --provider ttp "$@"
