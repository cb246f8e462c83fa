"""The benchmark harness (stage 3): complete records from real two-party runs on tiny geometries, the network
projection's formula, deterministic rounds and bytes, resumable sweeps, and the CLI's user errors.

Real CrypTen processes on loopback, no mocks. Tiny geometries (1 layer, d 32, vocab 64, msl 8, prefix 4) keep each
launch to seconds; the namespace check (root only) is ``slow``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil

import pytest

from benchmark import costs
from benchmark.harness import BenchSpec, build_config, launch_local, make_job, prompt_ids, run_phases, run_point
from benchmark.network import networks, parse_network
from benchmark.run import main as run_main
from benchmark.sweep import main as sweep_main
from mpcgen.mpc.costs import NETWORKS

TINY = ["--layers", "1", "--d-model", "32", "--heads", "2", "--vocab", "64"]
REQUIRED = ("seconds", "compute_s", "rounds", "bytes", "tokens", "per_token", "groups", "projected_s", "windows",
            "method", "decoding", "msl", "prefix_len", "weights", "provider", "step_start", "step_end")


@pytest.fixture(scope="module")
def merge_run(tmp_path_factory):
    """merge on a tiny GPT-2, msl 8, prefix 4, 3 measured tokens per window (start + end), two runs each, ttp:
    (exit status, stdout lines, the --json file)."""
    out = tmp_path_factory.mktemp("bench") / "merge.json"
    argv = ["--method", "merge", *TINY, "--msl", "8", "--prefix-len", "4", "--max-new-tokens", "3", "--runs", "2",
            "--net", "1gbit,10ms", "--json", str(out), "--log-level", "WARNING"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_main(argv)
    return code, stdout.getvalue().strip().splitlines(), out


def _run(argv, capsys):
    code = run_main(argv)
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_record_is_complete(merge_run):
    code, lines, out = merge_run
    assert code == 0
    record = json.loads(lines[-1])
    assert json.loads(out.read_text()) == record  # the last stdout line is the record written to --json
    for key in REQUIRED:
        assert key in record, key
    assert record["decoding"] == "er" and record["tokens"] == 4 and record["measured_tokens"] == 3
    assert record["estimated"] and set(record["windows"]) == {"start", "end"}
    assert record["windows"]["end"]["prompt_tokens"] == 8 - 3
    # every op group the model runs is booked, per token too
    for group in ("embed", "linear", "attention", "activation", "norm", "lm_head", "reveal"):
        assert group in record["groups"] and group in record["per_token"]["groups"], group
    assert record["rounds"] > 0 and record["bytes"] > 0 and record["dealer_bytes"] > 0
    assert 0 < record["compute_s"] <= record["seconds"] and 0 < record["cpu_s"]
    assert record["projection_compute"] == "cpu_s"
    # per phase: the groups add up to the phase total, and the phases to the stats' totals
    for window in record["windows"].values():
        stats = window["stats"]
        assert window["total"]["total"]["rounds"] == stats["rounds"]
        assert window["total"]["total"]["bytes"] == pytest.approx(stats["bytes"])
        for phase in [window["prompt"], *window["steps"], window["finish"]]:
            assert sum(g["bytes"] for g in phase["groups"].values()) == pytest.approx(phase["total"]["bytes"])
    # the sequence estimate: prompt + step 0 + (T - 1) x mean full step + finish (reveal scaled by T / K)
    start, end = record["windows"]["start"], record["windows"]["end"]
    reveal = start["finish"]["groups"]["reveal"]["bytes"]
    expect = (start["prompt"]["total"]["bytes"] + start["steps"][0]["total"]["bytes"]
              + 3 * (start["steady"]["total"]["bytes"] + end["steady"]["total"]["bytes"]) / 2
              + start["finish"]["total"]["bytes"] + reveal * (4 / 3 - 1))
    assert record["bytes"] == pytest.approx(expect)
    assert record["step_end"]["positions"] == [5, 6] and record["step_start"]["positions"] == [4, 5]
    # the session's one-time setup (weight sharing, fixed-weight openings), apart from the sequence's figures
    assert record["fixed_weights"] is True and record["setup"]["rounds"] > 0
    assert record["setup"] == start["stats"]["setup"]["total"]


def test_projection_matches_formula(merge_run):
    code, lines, _ = merge_run
    assert code == 0
    record = json.loads(lines[-1])
    for net in record["networks"]:
        bw, rtt = net["bandwidth_bps"], net["rtt_s"]
        for scope in (record, record["per_token"]):
            compute = scope["cpu_s"]  # CPU time of the busier party (compute_s where CPU time is not measured)
            expect = compute + scope["rounds"] * rtt + scope["bytes"] * 8 / bw
            assert scope["projected_s"][net["name"]] == pytest.approx(expect, rel=1e-12)
    assert {"lan", "wan", "1gbit,10ms"} <= set(record["projected_s"])
    lan = networks()[0]
    assert (lan.bandwidth_bps, lan.rtt_s) == NETWORKS["lan"] == (10e9, 0.5e-3)
    assert NETWORKS["wan"] == (200e6, 40e-3)
    assert lan.project(2.0, 10, 1e6) == pytest.approx(2.0 + 10 * 0.5e-3 + 8e6 / 10e9)


def test_runs_have_identical_rounds_and_bytes(merge_run):
    code, lines, _ = merge_run
    assert code == 0
    record = json.loads(lines[-1])
    for window in record["windows"].values():
        first, second = window["runs"]
        for key in ("rounds", "bytes", "dealer_rounds", "dealer_bytes"):
            assert first[key] == second[key], (window["name"], key)


def test_vanilla_tokens_deterministic_per_group():
    """Two launches of vanilla (tokens decoding: argmax and one-hot lookups under MPC): identical rounds and bytes
    in every phase and op group."""
    spec = BenchSpec(method="vanilla", layers=1, d_model=16, heads=2, vocab=32, msl=6, prefix_len=4, provider="tfp")
    config = build_config(spec)
    job = make_job(spec, config, 2)
    prompt = prompt_ids(config.vocab_size, spec.prefix_len, spec.seed)
    runs = [run_phases(launch_local(job, prompt, "tfp", 300)) for _ in range(2)]
    assert len(runs[0]) == len(runs[1]) == 4  # prompt, 2 steps, finish
    for a, b in zip(*runs):
        assert set(a["groups"]) == set(b["groups"])
        for group in a["groups"]:
            for key in ("rounds", "bytes"):
                assert a["groups"][group][key] == b["groups"][group][key], (group, key)
    assert "sampling" in runs[0][1]["groups"] and runs[0][1]["groups"]["sampling"]["rounds"] > 0


def test_encoder_decoder_record(tmp_path, capsys):
    out = tmp_path / "t5.json"
    code, lines, err = _run(["--method", "merge", "--arch", "encoder-decoder", *TINY, "--msl", "7", "--prefix-len",
                             "4", "--provider", "tfp", "--json", str(out), "--log-level", "WARNING"], capsys)
    assert code == 0, err
    record = json.loads(lines[-1])
    assert record["family"] == "t5" and record["arch"] == "encoder-decoder" and record["encoder_layers"] == 1
    assert record["tokens"] == 3 and not record["estimated"] and list(record["windows"]) == ["full"]
    assert record["windows"]["full"]["prompt_tokens"] == 4  # the encoder input
    assert record["step_start"]["positions"] == [1, 1] and record["step_end"]["positions"] == [2, 2]


def test_sweep_is_resumable(tmp_path, caplog):
    argv = ["msl", "--methods", "merge", "--msl", "6", *TINY, "--provider", "tfp", "--out", str(tmp_path),
            "--no-plots", "--log-level", "INFO"]
    assert sweep_main(argv) == 0
    points = list((tmp_path / "points").glob("*.json"))
    assert len(points) == 1
    before = points[0].stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="benchmark.sweep")
    assert sweep_main(argv) == 0
    assert points[0].stat().st_mtime_ns == before
    assert any("skip" in r.getMessage() for r in caplog.records)
    for name in ("results.csv", "results.json", "results.md"):
        assert (tmp_path / name).stat().st_size > 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["msl"] == 6 and rows[0]["method"] == "merge" and rows[0]["per_token_bytes"] > 0


def test_report_plots(tmp_path):
    """The report's plots from two point files (no launch: the records are built by hand)."""
    from benchmark.report import build_report

    (tmp_path / "points").mkdir()
    for method, scale in (("vanilla", 10.0), ("merge", 1.0)):
        for msl in (64, 128):
            phase = {**costs.zero(), "seconds": scale, "compute_s": scale / 2, "cpu_s": scale / 3,
                     "rounds": 10 * scale, "bytes": 1e6 * scale * msl}
            record = {"method": method, "decoding": "tokens", "msl": msl, "estimated": False, "layers": 1,
                      "d_model": 8, "heads": 1, **phase, "projected_s": {"lan": 1.0, "wan": 2.0},
                      "per_token": {**phase, "groups": {"linear": phase, "attention": phase},
                                    "projected_s": {"lan": 1.0, "wan": 2.0}}}
            (tmp_path / "points" / f"{method}-{msl}.json").write_text(json.dumps(record))
    written = build_report(tmp_path, "msl", lambda r: r["msl"])
    assert {p.name for p in written} >= {"time_vs_msl.png", "bytes_vs_msl.png", "groups_msl.png", "results.md"}
    table = (tmp_path / "results.md").read_text()
    assert "10.00x" in table and "10.0%" in table  # vanilla / merge time, merge / vanilla bytes


@pytest.mark.parametrize("text, bw, rtt", [("1Gbit,10ms", 1e9, 0.01), ("200mbit,40ms", 2e8, 0.04),
                                           ("1e9,0.01", 1e9, 0.01), ("500kbit/s, 250us", 5e5, 2.5e-4),
                                           ("wan", 2e8, 0.04), ("LAN", 1e10, 5e-4)])
def test_parse_network(text, bw, rtt):
    net = parse_network(text)
    assert math.isclose(net.bandwidth_bps, bw) and math.isclose(net.rtt_s, rtt)


@pytest.mark.parametrize("argv, message", [
    (["--net", "fast"], "network 'fast'"),
    (["--net", "1gbit,10parsecs"], "round-trip time"),
    (["--max-new-tokens", "1"], "must be >= 2"),
    (["--arch", "encoder-decoder", "--max-new-tokens", "2", "--window", "end"], "needs a decoder-only model"),
    (["--prefix-len", "8"], "prefix (8) < msl (8)"),
    (["--netns", "nowhere"], "network 'nowhere'"),
])
def test_user_errors(argv, message, capsys):
    code, _, err = _run([*TINY, "--msl", "8", "--prefix-len", "4", *argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_fixed_weights_cut_per_token_bytes():
    """The same point with fixed-mask weights and with fresh Beaver triples: identical tokens' rounds per step, far
    fewer online bytes per token with fixed masks, and a one-time setup only with them."""
    common = dict(method="merge", layers=1, d_model=32, heads=2, vocab=64, msl=7, prefix_len=4, provider="tfp")
    on, off = (run_point(BenchSpec(**common, fixed_weights=choice)) for choice in ("on", "off"))
    assert on["fixed_weights"] is True and off["fixed_weights"] is False
    assert on["per_token"]["bytes"] < 0.5 * off["per_token"]["bytes"]
    assert on["setup"]["bytes"] > 0 and on["setup"]["rounds"] > off["setup"]["rounds"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin") is None,
                    reason="network namespaces need root and iproute2")
def test_netns_shaped_link(tmp_path, capsys):
    """The parties over a shaped link: same rounds and bytes as on loopback, and slower by about the network term."""
    code, lines, err = _run(["--method", "merge", *TINY, "--msl", "6", "--prefix-len", "4", "--provider", "tfp",
                             "--netns", "100mbit,20ms", "--log-level", "WARNING"], capsys)
    assert code == 0, err
    check = json.loads(lines[-1])["netns"]["windows"]["full"]
    assert check["same_rounds_and_bytes"]
    assert check["measured_s"] > check["loopback_s"] + 0.5 * check["network_term_s"]
    assert not any(ns.startswith("mpcb") for ns in os.popen("ip netns list").read().split())
