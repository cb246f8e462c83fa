"""Why an Embedding Resending student's rollout fails: what its resent states look like to the model.

    .venv/bin/python scripts/er_probe.py --ckpt stage2_ckpts/frontier/lite-er [--limit 64] [--split validation]

On ``--limit`` examples of the split (teacher-forced, decoder-only students), over target positions whose next
token differs from their input, prints one JSON line:

- ``cos_own`` / ``cos_next``: mean cosine of the resent state r(h_t) with E(x_t) (the position's own input token)
  and with E(x_{t+1}) (the token it should stand for);
- ``acc_teacher_forced``: next-token accuracy with the true token embeddings as inputs;
- ``acc_resent``: the same when every generated position's input is the resent state of the position before it
  (one step of the rollout, from teacher-forced states);
- ``repeats_own_input``: how often the model, so fed, predicts the token it was fed.

A rollout holds only if ``acc_resent`` is close to ``acc_teacher_forced``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mpcgen.errors import MpcgenError  # noqa: E402

logger = logging.getLogger("er_probe")


@torch.no_grad()
def probe(ckpt: str, split: str = "validation", limit: int = 64, data_dir: str | None = None) -> dict[str, float]:
    """The probe's figures (see the module docstring) for the ER student at ``ckpt``."""
    from transformers import PreTrainedTokenizerFast

    from mpcgen import distill as D
    from mpcgen import train as T
    from mpcgen.data import load_examples
    from mpcgen.distill.student import token_embeddings
    from mpcgen.tokenization import IGNORE_INDEX

    model = D.load_student(ckpt).eval()
    if model.config.arch != "decoder" or not model.config.embedding_resend:
        raise MpcgenError(f"{ckpt}: the probe needs a decoder-only Embedding Resending student")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(ckpt)
    task = json.loads((Path(ckpt) / "training_args.json").read_text())["task"]
    examples = load_examples(task, split, data_dir)[:limit]
    batch = T.Collator(tokenizer.pad_token_id)(T.encode_examples(tokenizer, examples, is_encoder_decoder=False,
                                                                    max_length=model.config.n_positions))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    forced = model(input_ids=ids, attention_mask=mask)
    resent = model.resend_token(forced.hidden)[:, :-1]  # state t, as the input of position t + 1
    emb = token_embeddings(model, ids)
    own, nxt = emb[:, :-1], emb[:, 1:]
    keep = (labels[:, 1:] != IGNORE_INDEX) & (ids[:, :-1] != ids[:, 1:])
    generated = F.pad(keep, (1, 0))  # position t + 1's input is a token generation produces
    x = torch.where(generated[..., None], F.pad(resent, (0, 0, 1, 0)), emb)
    fed = model(inputs_embeds=x, attention_mask=mask).logits[:, :-1].argmax(-1)
    target = ids[:, 1:]
    return {
        "cos_own": float(F.cosine_similarity(resent, own, dim=-1)[keep].mean()),
        "cos_next": float(F.cosine_similarity(resent, nxt, dim=-1)[keep].mean()),
        "acc_teacher_forced": float((forced.logits[:, :-1].argmax(-1) == target)[keep].float().mean()),
        "acc_resent": float((fed == target)[keep].float().mean()),
        "repeats_own_input": float((fed == ids[:, :-1])[keep].float().mean()),
        "positions": int(keep.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="an ER student folder (distill.run --out)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=64, help="examples to probe")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $MPCGEN_DATA_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    try:
        print(json.dumps(probe(args.ckpt, args.split, args.limit, args.data_dir)))
    except MpcgenError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
