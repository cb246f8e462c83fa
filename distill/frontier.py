"""The quality / private-cost frontier of distilled students: test BLEU and slot error rate against the cost of one
private decoding step of each model at its real size, for each decoding it can be served with.

    python -m distill.frontier --teacher stage1_ckpts/e2e_nlg-gpt2 \\
        --students stage2_ckpts/e2e-mpcformer stage2_ckpts/e2e-merge ... --out docs/frontier

One row per model and decoding (``client``, ``tokens`` and, for ER students, ``er``). Quality:
:func:`mpcgen.evaluation.evaluate_checkpoint` with that decoding (``client`` and ``tokens`` make the same greedy
choice, so they share one evaluation; the teacher is scored with Hugging Face greedy search), cached beside the
checkpoint as ``frontier-<decoding>-metrics-<split>.json``. Cost: one benchmark point
(:func:`benchmark.harness.run_point`) on the checkpoint: ``--cost-tokens`` tokens after a ``--prompt-length``-token
prompt (random ids: cost does not depend on them), per generated token (LM head and reveal included), with the
LAN/WAN projections. Writes ``frontier.json``, ``frontier.md`` and ``frontier.png`` into ``--out``; each cost record
is cached there (``cost-<name>-<decoding>-<weights>-<provider>.json``), so a rerun only measures new rows.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import DECODINGS
from mpcgen.io import write_bytes, write_json, write_text
from mpcgen.models.loading import model_kind
from mpcgen.mpc.roles import PROVIDERS, WEIGHT_MODES

logger = logging.getLogger("distill.frontier")


def quality(ckpt: Path, split: str, limit: int | None, data_dir: str | None, decoding: str | None
            ) -> dict[str, Any]:
    """The checkpoint's metrics on ``split`` with ``decoding`` (None: the teacher's greedy search), evaluated now
    unless already on disk."""
    from mpcgen.evaluation import EvalSettings, evaluate_checkpoint, output_paths

    prefix = "frontier" + (f"-{decoding}" if decoding else "") + (f"-limit{limit}" if limit else "")
    path = output_paths(ckpt, split, 1, prefix)[1]
    if path.is_file():
        return json.loads(path.read_text())
    return evaluate_checkpoint(ckpt, split=split, settings=EvalSettings(batch_size=64, decoding=decoding),
                               limit=limit, data_dir=data_dir, out_prefix=prefix, progress=False)


def private_cost(ckpt: Path, *, decoding: str, prompt_length: int, tokens: int, provider: str, weights: str
                 ) -> dict[str, Any]:
    """Per-token cost of private generation with ``decoding`` (one benchmark point on the checkpoint itself)."""
    from benchmark.harness import BenchSpec, run_point
    from mpcgen.models.loading import load_model

    config = load_model(str(ckpt), preset="vanilla").config
    spec = BenchSpec(method=config.preset, arch=config.arch, checkpoint=str(ckpt), msl=prompt_length + tokens,
                     prefix_len=prompt_length, decoding=decoding, provider=provider, weights=weights,
                     timeout=3600.0)
    record = run_point(spec)
    per = record["per_token"]
    return {"decoding": decoding, "preset": config.preset, "attention": config.attention_layers or config.attention,
            "per_token": {k: per[k] for k in ("seconds", "cpu_s", "rounds", "bytes", "dealer_bytes")},
            "projected_s": per["projected_s"], "prompt_tokens": prompt_length, "new_tokens": tokens,
            "provider": provider, "weights": weights, "fixed_weights": record["fixed_weights"],
            "setup": record["setup"], "n_layer": config.n_layer, "n_embd": config.n_embd,
            "vocab": config.vocab_size}


def table(rows: list[dict[str, Any]], split: str) -> str:
    lines = [f"| model | preset | attention | decoding | {split} BLEU | SER | rounds / token | MB / token | "
             "CPU s / token | LAN s / token | WAN s / token |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, q = r["cost"], r["quality"]
        attention = c["attention"] if isinstance(c["attention"], str) else ",".join(
            "c" if a == "constant" else a for a in c["attention"])
        ser = "n/a" if q.get("ser") is None else f"{q['ser']:.1%}"
        per, proj = c["per_token"], c["projected_s"]
        cpu = per["cpu_s"] if per.get("cpu_s") is not None else per["seconds"]
        lines.append(f"| {r['name']} | {c['preset']} | {attention} | {c['decoding']} | {q['bleu']:.3f} | {ser} | "
                     f"{per['rounds']:.0f} | {per['bytes'] / 1e6:.2f} | {cpu:.3f} | {proj['lan']:.3f} | "
                     f"{proj['wan']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Top row: BLEU; bottom row: slot error rate (a student can keep BLEU and still drop or invent slots).
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.4), sharex="col")
    for col, (key, label) in enumerate((("rounds", "rounds per generated token"),
                                        ("bytes", "online MB per generated token"),
                                        ("wan", "WAN seconds per generated token"))):
        for row, (metric, ylabel) in enumerate((("bleu", f"{split} BLEU"), ("ser", f"{split} slot error rate"))):
            ax = axes[row][col]
            for r in rows:
                c, y = r["cost"], r["quality"].get(metric)
                if y is None:
                    continue
                x = c["projected_s"]["wan"] if key == "wan" else c["per_token"][key] / (1e6 if key == "bytes" else 1.0)
                ax.scatter(x, y, s=36)
                ax.annotate(f"{r['name']} ({c['decoding']})", (x, y), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            ax.set_xscale("log")
            if metric == "ser":
                ax.set_yscale("symlog", linthresh=0.1)
                ax.set_xlabel(label + " (private, log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    fig.suptitle("Quality vs private cost per token (students at their real size)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _decodings(ckpt: Path, wanted: Sequence[str]) -> list[str]:
    """The decodings of ``wanted`` the model can run (er needs Embedding Resending)."""
    from mpcgen.models.loading import load_model

    config = load_model(str(ckpt)).config
    return [d for d in wanted if d != "er" or config.embedding_resend]


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
    parser.add_argument("--provider", default="ttp", choices=sorted(PROVIDERS))
    parser.add_argument("--weights", default="private", choices=WEIGHT_MODES)
    parser.add_argument("--decodings", nargs="+", default=list(DECODINGS), choices=DECODINGS,
                        help="decodings to put on the table (er only where the model has Embedding Resending)")
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
            for decoding in _decodings(ckpt, args.decodings):
                # client and tokens make the same greedy choice, so their texts (and scores) are the same
                q = quality(ckpt, args.split, args.limit, args.data_dir, "er" if decoding == "er" else
                            (None if model_kind(ckpt) == "teacher" else "client"))
                cost_path = out / f"cost-{name}-{decoding}-{args.weights}-{args.provider}.json"
                if cost_path.is_file():
                    c = json.loads(cost_path.read_text())
                else:
                    c = private_cost(ckpt, decoding=decoding, prompt_length=args.prompt_length,
                                     tokens=args.cost_tokens, provider=args.provider, weights=args.weights)
                    write_json(cost_path, c)
                rows.append({"name": name, "checkpoint": str(ckpt), "quality": {k: q.get(k) for k in (
                    "bleu", "bleu_e2e", "nist", "rouge_l", "chrf", "ser", "n")}, "cost": c})
                logger.info("%s (%s): BLEU %.3f, %.0f rounds / token", name, decoding, q["bleu"],
                            c["per_token"]["rounds"])
    except MpcgenError as err:
        logger.error("%s", err)
        return 2
    write_json(out / "frontier.json", {"split": args.split, "limit": args.limit, "rows": rows})
    md = table(rows, args.split)
    write_text(out / "frontier.md", md)
    plot(rows, out / "frontier.png", args.split)
    print(md)
    print(json.dumps({"rows": [{"name": r["name"], "decoding": r["cost"]["decoding"], "bleu": r["quality"]["bleu"],
                                "ser": r["quality"]["ser"], "per_token": r["cost"]["per_token"]} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
