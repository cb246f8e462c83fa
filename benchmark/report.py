"""Tables and plots of a sweep, built from its point files only (``<out>/points/*.json``).

Writes into ``<out>``: ``results.csv`` (one row per point), ``results.json`` (the same rows), ``results.md`` (a
Markdown table with each method's ratio to vanilla at the same x), and with matplotlib ``time_vs_<x>.png``,
``bytes_vs_<x>.png`` and ``groups_<x>.png`` (stacked bars per op group). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark.costs import compute_of
from mpcgen.io import write_bytes, write_json, write_text

logger = logging.getLogger(__name__)

GROUP_ORDER = ("embed", "linear", "attention", "activation", "norm", "lm_head", "sampling", "reveal", "other")
COLUMNS = ("method", "decoding", "arch", "family", "layers", "encoder_layers", "d_model", "heads", "vocab", "msl",
           "prefix_len", "weights", "provider", "fixed_weights", "tokens", "measured_tokens", "window", "estimated",
           "seconds", "compute_s", "cpu_s", "rounds", "bytes", "dealer_bytes", "per_token_s", "per_token_compute_s",
           "per_token_cpu_s", "per_token_rounds", "per_token_bytes", "per_token_lan_s", "per_token_wan_s",
           "step_start_s", "step_start_cpu_s", "step_start_rounds", "step_start_bytes", "step_end_s",
           "step_end_cpu_s", "step_end_rounds", "step_end_bytes", "lan_s", "wan_s", "setup_s", "setup_bytes",
           "load_avg", "commit", "started")


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a point record."""
    per, start, end = record["per_token"], record.get("step_start") or {}, record.get("step_end") or {}
    proj, per_proj = record.get("projected_s") or {}, per.get("projected_s") or {}
    out = {k: record.get(k) for k in COLUMNS}
    setup = record.get("setup") or {}
    out.update(per_token_s=per["seconds"], per_token_compute_s=per["compute_s"], per_token_cpu_s=per.get("cpu_s"),
               per_token_rounds=per["rounds"], per_token_bytes=per["bytes"], per_token_lan_s=per_proj.get("lan"),
               per_token_wan_s=per_proj.get("wan"), step_start_s=start.get("seconds"),
               step_start_cpu_s=start.get("cpu_s"), step_start_rounds=start.get("rounds"),
               step_start_bytes=start.get("bytes"), step_end_s=end.get("seconds"), step_end_cpu_s=end.get("cpu_s"),
               step_end_rounds=end.get("rounds"), step_end_bytes=end.get("bytes"), lan_s=proj.get("lan"),
               wan_s=proj.get("wan"), setup_s=_setup_s(setup), setup_bytes=setup.get("bytes"),
               load_avg=(record.get("host") or {}).get("load_avg", [None])[0])
    return out


def load_points(out: Path) -> list[dict[str, Any]]:
    """Every point record under ``out/points`` (unreadable files are skipped with a warning)."""
    records = []
    for path in sorted((out / "points").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping %s: %s", path, err)
    return records


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["x", *COLUMNS], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def markdown(rows: Sequence[dict[str, Any]], x_name: str, x_of: Callable[[dict[str, Any]], Any]) -> str:
    """A table per x value: each method's per-token figures and its ratios to vanilla at the same x."""
    head = (f"| {x_name} | method | decoding | per token: wall s (CPU s) | rounds | MB online | LAN s | WAN s | "
            "full step at end: CPU s / rounds / MB | sequence: GB online | vanilla / method: CPU, WAN, LAN | "
            "bytes method / vanilla |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_x: dict[Any, list[dict[str, Any]]] = {}
    rows = [{**r, "per_token_cpu": _first(r, "per_token_cpu_s", "per_token_compute_s"),
             "step_end_cpu": _first(r, "step_end_cpu_s", "step_end_s")} for r in rows]
    for r in rows:
        by_x.setdefault(x_of(r), []).append(r)
    for x in sorted(by_x, key=_sort_key):
        base = next((r for r in by_x[x] if r["method"] == "vanilla"), None)
        for r in sorted(by_x[x], key=lambda r: r["method"]):
            ratio = bratio = "-"
            if base is not None and r is not base:
                ratio = ", ".join(_ratio(base[k], r[k]) for k in ("per_token_cpu", "per_token_wan_s",
                                                                  "per_token_lan_s"))
                bratio = _pct(r["per_token_bytes"], base["per_token_bytes"])
            est = "*" if r["estimated"] else ""
            lines.append(
                f"| {x} | {r['method']} | {r['decoding']} | {_fmt(r['per_token_s'])} ({_fmt(r['per_token_cpu'])})"
                f" | {_fmt(r['per_token_rounds'], digits=1)} | {_fmt(r['per_token_bytes'], 1e6, 1)} | "
                f"{_fmt(r['per_token_lan_s'])} | {_fmt(r['per_token_wan_s'])} | {_fmt(r['step_end_cpu'])} / "
                f"{_fmt(r['step_end_rounds'], digits=0)} / {_fmt(r['step_end_bytes'], 1e6, 1)} | "
                f"{_fmt(r['bytes'], 1e9, 2)}{est} | {ratio} | {bratio} |")
    lines.append("")
    lines.append("Per token = everything after the prompt phase / generated tokens (sequence average); CPU s = CPU "
                 "time of the busier party (wall minus communication where not measured); LAN / WAN = projected "
                 "seconds per token; * = sequence estimated from measured windows (see benchmark/README.md). Ratios "
                 "are vanilla / method for time (x faster) and method / vanilla for bytes.")
    return "\n".join(lines) + "\n"


def _first(r: dict[str, Any], *keys: str) -> Any:
    return next((r[k] for k in keys if r.get(k) is not None), None)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _pct(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{100.0 * a / b:.1f}%"


def _sort_key(x: Any) -> tuple:
    return (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))


def plots(records: Sequence[dict[str, Any]], out: Path, x_name: str,
          x_of: Callable[[dict[str, Any]], Any]) -> list[Path]:
    """time vs x, bytes vs x (per generated token, one line per method) and stacked op-group bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in records})
    xs = sorted({x_of(r) for r in records}, key=_sort_key)
    numeric = all(isinstance(x, (int, float)) for x in xs)
    pos = {x: (x if numeric else i) for i, x in enumerate(xs)}

    def series(metric: Callable[[dict[str, Any]], float | None], method: str) -> tuple[list, list]:
        pts = sorted(((pos[x_of(r)], metric(r)) for r in records if r["method"] == method and metric(r) is not None))
        return [p[0] for p in pts], [p[1] for p in pts]

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("measured wall s", lambda r: r["per_token"]["seconds"]),
              ("CPU s", lambda r: compute_of(r["per_token"])),
              ("projected WAN s", lambda r: (r["per_token"].get("projected_s") or {}).get("wan"))]
    for ax, (title, metric) in zip(axes, panels):
        for m in methods:
            ax.plot(*series(metric, m), marker="o", label=m)
        _axes(ax, numeric, xs, pos, x_name, f"per generated token: {title}")
    axes[0].legend()
    written.append(_save(fig, out / f"time_vs_{x_name}.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (title, metric) in zip(axes, [("online MB", lambda r: r["per_token"]["bytes"] / 1e6),
                                          ("rounds", lambda r: r["per_token"]["rounds"])]):
        for m in methods:
            ax.plot(*series(metric, m), marker="o", label=m)
        _axes(ax, numeric, xs, pos, x_name, f"per generated token: {title}")
    axes[0].legend()
    written.append(_save(fig, out / f"bytes_vs_{x_name}.png"))

    groups = [g for g in GROUP_ORDER if any(g in r["per_token"]["groups"] for r in records)]
    fig, axes = plt.subplots(1, 2, figsize=(max(11, 1.2 * len(xs) * len(methods)), 4.8))
    width = 0.8 / max(1, len(methods))
    colors = plt.get_cmap("tab10")
    for ax, (title, key, scale) in zip(axes, [("online MB per token", "bytes", 1e6),
                                              ("rounds per token", "rounds", 1.0)]):
        for j, m in enumerate(methods):
            for i, x in enumerate(xs):
                r = next((r for r in records if r["method"] == m and x_of(r) == x), None)
                if r is None:
                    continue
                bottom = 0.0
                for k, g in enumerate(groups):
                    value = ((r["per_token"]["groups"].get(g) or {}).get(key) or 0.0) / scale
                    ax.bar(i + (j - (len(methods) - 1) / 2) * width, value, width * 0.9, bottom=bottom,
                           color=colors(k), label=g if (i == 0 and j == 0) else None)
                    bottom += value
                ax.text(i + (j - (len(methods) - 1) / 2) * width, bottom, m, rotation=90, ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(x_name)
        ax.set_title(title + " by op group")
        ax.margins(y=0.25)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, out / f"groups_{x_name}.png"))
    return written


def _axes(ax: Any, numeric: bool, xs: list, pos: dict, x_name: str, title: str) -> None:
    if numeric:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    else:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=20)
    ax.set_yscale("log")
    ax.set_xlabel(x_name)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def build_report(out: Path, x_name: str, x_of: Callable[[dict[str, Any]], Any], *, plot: bool = True) -> list[Path]:
    """Write the CSV, JSON, Markdown and plots of ``out``'s points; the files written."""
    records = load_points(out)
    if not records:
        logger.warning("no points in %s/points yet: no report", out)
        return []
    rows = [row(r) for r in records]
    for r, rec in zip(rows, records):
        r["x"] = x_of(rec)
    write_csv(out / "results.csv", rows)
    write_json(out / "results.json", rows)
    write_text(out / "results.md", markdown(rows, x_name, lambda r: r["x"]))
    written = [out / "results.csv", out / "results.json", out / "results.md"]
    if plot:
        written += plots(records, out, x_name, x_of)
    return written


# ------------------------------------------------------------------------------------ tables of single points


def compare_table(records: Sequence[dict[str, Any]]) -> str:
    """Methods side by side per setting (weights, provider, fixed weights): per-token and sequence figures and
    each method's ratios to vanilla under the same setting."""
    def setting(r: dict[str, Any]) -> tuple:
        return (r["weights"], r["provider"], str(r.get("fixed_weights")), r["msl"], r["prefix_len"],
                f"{r['layers']}/{r['d_model']}/{r['heads']}/{r['vocab']}")

    lines = ["| weights | provider | fixed weights | method | per token: CPU s | rounds | online MB | LAN s | WAN s |"
             " full step at start: CPU s / rounds / MB | at end: CPU s / rounds / MB | sequence: rounds / GB "
             "online / GB dealer | setup: s / GB | vanilla / method: CPU, LAN, WAN | bytes: method / vanilla |",
             "|" + "---|" * 15]
    for key in sorted({setting(r) for r in records}):
        group = sorted((r for r in records if setting(r) == key), key=lambda r: r["method"] != "vanilla")
        base = next((r for r in group if r["method"] == "vanilla"), None)
        for r in group:
            per, proj = r["per_token"], r["per_token"]["projected_s"]
            start, end, setup = r.get("step_start") or {}, r.get("step_end") or {}, r.get("setup") or {}
            ratio = bratio = "-"
            if base is not None and r is not base:
                bper, bproj = base["per_token"], base["per_token"]["projected_s"]
                ratio = ", ".join([_ratio(compute_of(bper), compute_of(per)), _ratio(bproj.get("lan"),
                                   proj.get("lan")), _ratio(bproj.get("wan"), proj.get("wan"))])
                bratio = _pct(r["bytes"], base["bytes"])
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {r['method']} ({r['decoding']}) | {_fmt(compute_of(per))} | "
                f"{_fmt(per['rounds'], digits=1)} | {_fmt(per['bytes'], 1e6, 1)} | {_fmt(proj.get('lan'))} | "
                f"{_fmt(proj.get('wan'))} | {_fmt(compute_of(start) if start else None)} / "
                f"{_fmt(start.get('rounds'), digits=0)} / {_fmt(start.get('bytes'), 1e6, 1)} | "
                f"{_fmt(compute_of(end) if end else None)} / {_fmt(end.get('rounds'), digits=0)} / "
                f"{_fmt(end.get('bytes'), 1e6, 1)} | {_fmt(r['rounds'], digits=0)} / {_fmt(r['bytes'], 1e9)} / "
                f"{_fmt(r['dealer_bytes'], 1e9)} | {_fmt(_setup_s(setup), digits=1)} / "
                f"{_fmt(setup.get('bytes'), 1e9)} | {ratio} | {bratio} |")
    return "\n".join(lines) + "\n"


def netns_table(records: Sequence[dict[str, Any]]) -> str:
    """Measured time over the shaped link against the projections, one row per record and window."""
    lines = ["| point | link (shaper, MTU, TCP RTT) | rounds | MB | loopback: wall s / CPU s | shaped: wall s / CPU s |"
             " projected s (duplex) | latency + bandwidth terms s | measured / projected | RTTs per round (duplex) |",
             "|" + "---|" * 10]
    for r in records:
        n = r.get("netns")
        if not n:
            continue
        for name, c in n["windows"].items():
            rtt = n.get("tcp_rtt_s")
            lines.append(
                f"| {r['method']} L{r['layers']} d{r['d_model']} V{r['vocab']} msl {r['msl']} {r['provider']} "
                f"({name}) | {n['network']['name']} ({n.get('shaper')}, {n.get('mtu')}, "
                f"{'-' if rtt is None else f'{rtt * 1e3:.1f} ms'}) | {c['rounds']:.0f} | {c['bytes'] / 1e6:.1f} | "
                f"{c['loopback_s']:.2f} / {_fmt(c.get('loopback_cpu_s'))} | {c['measured_s']:.2f} / "
                f"{_fmt(c.get('measured_cpu_s'))} | {c['projected_s']:.2f} ({c['projected_duplex_s']:.2f}) | "
                f"{c['latency_term_s']:.2f} + {c['bandwidth_term_s']:.2f} | {c['measured_over_projected']:.2f} | "
                f"{_fmt(c.get('rtts_per_round'))} ({_fmt(_duplex_rtts(c))}) |")
    return "\n".join(lines) + "\n"


def _duplex_rtts(c: dict[str, Any]) -> float | None:
    """RTTs per round with half the bytes each way (also for records written before the field existed)."""
    if c.get("rtts_per_round_duplex") is not None:
        return c["rtts_per_round_duplex"]
    if not c.get("latency_term_s") or c.get("measured_network_s") is None:
        return None
    return (c["measured_network_s"] - c["bandwidth_term_s"] / 2.0) / c["latency_term_s"]


def _setup_s(setup: dict[str, Any]) -> float | None:
    """Setup seconds of a record (``seconds``; records written before the one cost model say ``s``)."""
    return setup.get("seconds", setup.get("s"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark.report compare|netns RECORD... --out FILE.md``: a Markdown table of single points."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=main.__doc__)
    parser.add_argument("kind", choices=("compare", "netns"))
    parser.add_argument("records", nargs="+")
    parser.add_argument("--out", default=None, help="write the table here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        records = [json.loads(Path(p).read_text()) for p in args.records]
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read a record: {err}", file=sys.stderr)
        return 2
    table = compare_table(records) if args.kind == "compare" else netns_table(records)
    if args.out:
        write_text(Path(args.out), table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
