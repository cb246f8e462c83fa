"""The quality / private-cost frontier of distilled students: test BLEU and slot error rate against the cost of one
encrypted decoding step of each model at its real size.

    python -m distill.frontier --teacher stage1_ckpts/e2e_nlg-gpt2 \\
        --students stage2_ckpts/e2e-mpcformer stage2_ckpts/e2e-merge ... --out docs/frontier

Quality: each model's ``metrics-<split>.json`` written by ``python -m nlg.evaluate`` (run here when missing, with
the decoding the model uses privately: ER rollout for ER students, token re-embedding otherwise; the teacher with
greedy search). Cost: ``generate_private`` of ``--cost-tokens`` tokens after a ``--prompt-length``-token prompt
(random ids: cost does not depend on them), with the model's private decoding, ``--weights`` and ``--provider``;
per generated token (LM head and reveal included). Writes ``frontier.json``, ``frontier.md`` and ``frontier.png``
into ``--out``; each model's cost record is cached there (``cost-<name>.json``), so a rerun only measures new models.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from mpcgen.checkpoint import write_json
from mpcgen.errors import MpcgenError

logger = logging.getLogger("distill.frontier")


def quality(ckpt: Path, split: str, limit: int | None, data_dir: str | None) -> dict[str, Any]:
    """The checkpoint's metrics on ``split`` (all sources unless ``limit``), evaluated now if not on disk."""
    from nlg import evaluate as E

    prefix = "frontier" + (f"-limit{limit}" if limit else "")
    path = E.output_paths(ckpt, split, 1, prefix)[1]
    if path.is_file():
        return json.loads(path.read_text())
    argv = ["--ckpt", str(ckpt), "--split", split, "--batch-size", "64", "--out-prefix", prefix, "--no-progress",
            "--num-threads", "1"]
    if limit:
        argv += ["--limit", str(limit)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    return E.evaluate(E.parse_args(argv))


def private_cost(ckpt: Path, *, prompt_length: int, tokens: int, provider: str, weights: str) -> dict[str, Any]:
    """Per-token cost of private generation with the model's own private decoding."""
    from mpcgen.generation import generate_private
    from mpcgen.generation.inputs import load_model
    from mpcgen.generation.loop import default_decoding

    model = load_model(str(ckpt), preset="vanilla")
    prompt = torch.randint(3, model.config.vocab_size, (prompt_length,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    (result,) = generate_private(model, [prompt], max_new_tokens=tokens, provider=provider, weights=weights,
                                 timeout=3600.0)
    s = result.stats
    return {"decoding": default_decoding(model.config), "preset": model.config.preset,
            "attention": model.config.attention_layers or model.config.attention, "per_token": s.per_token(),
            "prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens, "provider": provider, "weights": weights,
            "fixed_weights": s.fixed_weights, "setup_s": s.setup_s, "setup_bytes": s.setup_bytes,
            "n_layer": model.config.n_layer, "n_embd": model.config.n_embd, "vocab": model.config.vocab_size}


def table(rows: list[dict[str, Any]], split: str) -> str:
    lines = [f"| model | preset | attention | decoding | {split} BLEU | SER | s / token | MB / token | rounds / token |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, q = r["cost"], r["quality"]
        attention = c["attention"] if isinstance(c["attention"], str) else ",".join(
            "c" if a == "constant" else a for a in c["attention"])
        ser = "n/a" if q.get("ser") is None else f"{q['ser']:.1%}"
        lines.append(f"| {r['name']} | {c['preset']} | {attention} | {c['decoding']} | {q['bleu']:.3f} | {ser} | "
                     f"{c['per_token']['seconds']:.3f} | {c['per_token']['bytes'] / 1e6:.2f} | "
                     f"{c['per_token']['rounds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "seconds", "seconds per generated token"),
                           (axes[1], "bytes", "online MB per generated token")):
        for r in rows:
            x = r["cost"]["per_token"][key] / (1e6 if key == "bytes" else 1.0)
            ax.scatter(x, r["quality"]["bleu"], s=36)
            ax.annotate(r["name"], (x, r["quality"]["bleu"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label + " (private, log scale)")
        ax.set_ylabel(f"{split} BLEU")
        ax.grid(alpha=0.3)
    fig.suptitle("Quality vs private cost per token (students at their real size)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill.frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="stage-1 teacher folder (its own row, vanilla + tokens)")
    parser.add_argument("--students", nargs="*", default=[], help="student folders (distill.run --out)")
    parser.add_argument("--names", nargs="*", default=None, help="row labels (default: folder names)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N sources (default: all)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $MPCGEN_DATA_DIR)")
    parser.add_argument("--prompt-length", type=int, default=32, help="prompt tokens for the cost run")
    parser.add_argument("--cost-tokens", type=int, default=4, help="generated tokens for the cost run")
    parser.add_argument("--provider", default="ttp", choices=("ttp", "tfp"))
    parser.add_argument("--weights", default="private", choices=("private", "public"))
    parser.add_argument("--out", default="docs/frontier", help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dirs = [Path(args.teacher), *map(Path, args.students)]
    names = args.names or [d.name for d in dirs]
    try:
        if len(names) != len(dirs):
            raise MpcgenError(f"--names has {len(names)} labels for {len(dirs)} models")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for name, ckpt in zip(names, dirs):
            if not ckpt.is_dir():
                raise MpcgenError(f"{ckpt} is not a folder")
            q = quality(ckpt, args.split, args.limit, args.data_dir)
            cost_path = out / f"cost-{name}-{args.weights}-{args.provider}.json"
            if cost_path.is_file():
                c = json.loads(cost_path.read_text())
            else:
                c = private_cost(ckpt, prompt_length=args.prompt_length, tokens=args.cost_tokens,
                                 provider=args.provider, weights=args.weights)
                write_json(cost_path, c)
            rows.append({"name": name, "checkpoint": str(ckpt), "quality": {k: q.get(k) for k in (
                "bleu", "nist", "rouge_l", "chrf", "ser", "n")}, "cost": c})
            logger.info("%s: BLEU %.3f, %.3f s / token", name, q["bleu"], c["per_token"]["seconds"])
    except MpcgenError as err:
        logger.error("%s", err)
        return 2
    write_json(out / "frontier.json", {"split": args.split, "limit": args.limit, "rows": rows})
    md = table(rows, args.split)
    tmp = out / "frontier.md.tmp"
    tmp.write_text(md)
    tmp.replace(out / "frontier.md")
    plot(rows, out / "frontier.png", args.split)
    print(md)
    print(json.dumps({"rows": [{"name": r["name"], "bleu": r["quality"]["bleu"], "ser": r["quality"]["ser"],
                                "per_token": r["cost"]["per_token"]} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
