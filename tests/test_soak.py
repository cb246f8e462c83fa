"""Two sessions on one host at once, on different ports, both succeed (``benchmark.soak`` at a small size).

The long run (200 prompts a session, RSS within 10% after warm-up, no descriptor growth) is the benchmark's job:
``python -m benchmark.soak``, figures in ``benchmark/results/soak-*.json`` and ``docs/results.md``.
"""

from __future__ import annotations

import pytest

from benchmark.soak import build_parser, main, run


def test_two_sessions_at_once_both_generate_the_plaintext_tokens() -> None:
    args = build_parser().parse_args(["--prompts", "10", "--max-new-tokens", "3", "--sessions", "2", "--tls",
                                      "--interval", "0.2", "--link-timeout", "30", "--timeout", "900"])
    record = run(args)
    sessions = record["sessions"]
    assert len({s["port"] for s in sessions}) == 2
    for s in sessions:
        assert "failed" not in s, s.get("failed")
        assert s["exit"] == {"server": 0, "client": 0, "dealer": 0}
        assert s["tokens_match"]
        for party in s["parties"].values():
            assert party["samples"] >= 4 and party["fds_warm"] > 0 and party["rss_warm_mb"] > 50
    # At once: each session generated while the other did.
    starts = [s["generation_start_s"] for s in sessions]
    ends = [s["generation_start_s"] + s["generation_s"] for s in sessions]
    assert max(starts) < min(ends)


@pytest.mark.parametrize("argv", [["--prompts", "3"], ["--sessions", "0"], ["--warmup", "1.5"]])
def test_bad_soak_settings_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
