"""Cost meter: the LAN/WAN projection, attribution of known costs to op groups, dealer traffic kept apart, and
deterministic counts. Real two-party CrypTen runs on loopback."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from torch import nn

from mpcgen.mpc.compat import crypten
from mpcgen.mpc.launch import run_parties
from mpcgen.mpc.costs import NETWORKS, Cost, CostReport, GroupCost, PartyCost, project_time
from mpcgen.mpc.meter import CostMeter

N = 1000  # elements of the secret x secret product

# ------------------------------------------------------------------------------------------------ projection


def test_project_time_formula() -> None:
    # 2 s compute + 100 rounds * 40 ms + 1e9 bytes * 8 / 200 Mbit/s = 2 + 4 + 40
    assert project_time(2.0, 100, 1e9, bandwidth_bps=200e6, rtt_s=0.04) == pytest.approx(46.0)
    assert project_time(0.0, 0, 0, bandwidth_bps=1.0, rtt_s=0.0) == 0.0
    assert project_time(1.5, 0, 0, bandwidth_bps=1e9, rtt_s=1.0) == 1.5


def test_network_presets() -> None:
    assert NETWORKS["lan"] == (10e9, 0.5e-3)
    assert NETWORKS["wan"] == (200e6, 40e-3)
    lan = project_time(1.0, 1000, 1.25e9, bandwidth_bps=NETWORKS["lan"][0], rtt_s=NETWORKS["lan"][1])
    assert lan == pytest.approx(1.0 + 0.5 + 1.0)


def test_project_time_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        project_time(1.0, 1, 1, bandwidth_bps=0.0, rtt_s=0.01)
    with pytest.raises(ValueError):
        project_time(-1.0, 1, 1, bandwidth_bps=1.0, rtt_s=0.01)


# --------------------------------------------------------------------------------------------- party functions


class _Mul(nn.Module):
    """A leaf op module tagged like the models' ones."""

    cost_group: ClassVar[str] = "activation"

    def forward(self, x, y):
        return x * y


class _Outer(nn.Module):
    """An untagged wrapper around a tagged module and a tagged matmul: innermost group wins."""

    cost_group: ClassVar[str] = "attention"

    def __init__(self) -> None:
        super().__init__()
        self.mul = _Mul()

    def forward(self, x, y):
        z = self.mul(x, y)  # -> "activation"
        return z.sum().view(1)  # local: costs nothing, booked to "attention"


def _metered_party(rank: int) -> PartyCost:
    x = crypten.cryptensor(torch.rand(N), src=0)
    y = crypten.cryptensor(torch.rand(N), src=1)
    model = _Outer()
    meter = CostMeter().attach(model)
    with meter:
        with meter.section("linear"):
            x * y  # one secret x secret product of N elements
        with meter.section("lm_head"):
            model(x, y)  # the module's inner _Mul claims it
        with meter.section("reveal"):
            x.get_plain_text(dst=1)
    meter.detach()
    return meter.result()


def _report(provider: str) -> CostReport:
    return CostReport.from_parties(run_parties(_metered_party, provider=provider, timeout=60), provider=provider)


@pytest.fixture(scope="module")
def reports() -> dict[str, list[CostReport]]:
    return {provider: [_report(provider), _report(provider)] for provider in ("tfp", "ttp")}


# -------------------------------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("provider", ["tfp", "ttp"])
def test_a_product_costs_one_round_and_its_beaver_openings(reports, provider: str) -> None:
    report = reports[provider][0]
    # Beaver: each party sends its shares of x - a and y - b (2N ring elements, 8 bytes each) in one round.
    # CrypTen counts a party's sent + received: 2 * 2N * 8 per party; the link carries 2 * 2N * 8 in total.
    for party in report.parties:
        assert party.groups["linear"].rounds == 1
        assert party.groups["linear"].bytes == 32 * N
        assert party.groups["activation"].rounds == 1 and party.groups["activation"].bytes == 32 * N
    linear = report.groups["linear"]
    assert linear.rounds == 1 and linear.bytes == 32 * N
    # Innermost wins: the tagged module inside the section took the product; the wrapper's own work is local.
    assert report.groups["activation"].bytes == 32 * N
    assert report.groups["attention"].bytes == 0 and report.groups["attention"].rounds == 0
    assert report.groups.get("lm_head", Cost()).bytes == 0
    # Revealing to one party: the other sends its N shares (one reduce; both ends count it).
    assert report.groups["reveal"].rounds == 1 and report.groups["reveal"].bytes == 8 * N
    assert report.rounds == 3 and report.online_bytes == 72 * N


def test_dealer_traffic_is_kept_apart(reports) -> None:
    tfp, ttp = reports["tfp"][0], reports["ttp"][0]
    # Online traffic does not depend on who made the triples.
    assert {g: (v.rounds, v.bytes) for g, v in ttp.groups.items()} == \
        {g: (v.rounds, v.bytes) for g, v in tfp.groups.items()}
    assert tfp.dealer_bytes == 0 and tfp.dealer_rounds == 0
    # TTP: per product, rank 0 sends a request, receives a size and the N-element share of c (3 exchanges).
    for group in ("linear", "activation"):
        assert ttp.groups[group].dealer_rounds == 3
        assert 8 * N <= ttp.groups[group].dealer_bytes < 8 * N + 1024  # + the small request / size messages
    assert ttp.parties[1].total().dealer_bytes == 0  # rank 1 draws its tuple shares from a shared seed


def test_counts_are_deterministic(reports) -> None:
    for provider, (first, second) in reports.items():
        def counts(report: CostReport) -> dict:
            return {g: (v.rounds, v.bytes, v.dealer_rounds, v.dealer_bytes)
                    for g, v in report.groups.items()}
        assert counts(first) == counts(second), provider


def test_report_to_dict(reports) -> None:
    out = reports["ttp"][0].to_dict()
    assert out["provider"] == "ttp" and len(out["parties"]) == 2
    assert set(out["projected_s"]) == set(NETWORKS)
    assert out["projected_s"]["wan"] >= out["projected_s"]["lan"] >= out["total"]["cpu_s"] > 0
    assert CostReport.from_dict(out).to_dict() == out


def test_combine_rule() -> None:
    """Seconds, communication time, compute and rounds: the most of any party; link bytes: summed and halved;
    dealer traffic: summed; CPU time: the most, unknown if any party's is."""
    a = GroupCost(seconds=2.0, comm_seconds=1.5, rounds=3, bytes=100.0)
    b = GroupCost(seconds=2.5, comm_seconds=0.5, rounds=3, bytes=100.0, dealer_rounds=2, dealer_bytes=9.0)
    assert Cost.combine([a, b], [1.0, 3.0]) == Cost(seconds=2.5, compute_s=2.0, cpu_s=3.0, comm_s=1.5, rounds=3,
                                                    bytes=100.0, dealer_rounds=2, dealer_bytes=9.0)
    assert Cost.combine([a, b], [1.0, None]).cpu_s is None


def test_phases_of_snapshots_add_up() -> None:
    """Snapshots of one meter cut a run into phases that add up to the run (PartyCost.since)."""
    first = PartyCost(0, 1.0, {"linear": GroupCost(seconds=1.0, rounds=2, bytes=10.0)}, cpu_s=0.5)
    later = PartyCost(0, 3.0, {"linear": GroupCost(seconds=2.0, rounds=5, bytes=30.0),
                               "norm": GroupCost(seconds=1.0, rounds=1, bytes=4.0)}, cpu_s=2.0)
    step = later.since(first)
    assert step.wall_s == 2.0 and step.cpu_s == 1.5
    assert step.groups["linear"] == GroupCost(seconds=1.0, rounds=3, bytes=20.0) and step.groups["norm"].rounds == 1
    whole = CostReport.sum([CostReport.from_parties([first], provider="tfp"),
                            CostReport.from_parties([step], provider="tfp")])
    assert whole.total.rounds == later.total().rounds and whole.groups["linear"].rounds == 5


def test_cost_cli_small_geometry(capsys, tmp_path) -> None:
    from mpcgen.cli.cost import main

    out_json = tmp_path / "cost.json"
    argv = ["--preset", "merge", "--layers", "1", "--d-model", "16", "--heads", "2", "--vocab", "40", "--tokens", "4",
            "--positions", "8", "--provider", "ttp", "--json", str(out_json)]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == json.loads(out_json.read_text())
    assert record["preset"] == "merge" and record["provider"] == "ttp" and record["weights"] == "private"
    assert record["rounds"] > 0 and record["online_bytes"] > 0 and record["dealer_bytes"] > 0
    # embedding: the (4 x 40) one-hot times the (40 x 16) table, one round. With fixed masks (the default) only the
    # one-hot's mask is opened; the table's opening F = W - B is the session's setup.
    assert record["fixed_weights"] is True
    assert record["groups"]["embed"]["rounds"] == 1
    assert record["groups"]["embed"]["bytes"] == 2 * (4 * 40) * 8
    assert record["groups"]["setup"]["bytes"] >= 2 * (40 * 16) * 8
    assert main(argv + ["--fixed-weights", "off"]) == 0
    fresh = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fresh["fixed_weights"] is False and "setup" in fresh["groups"]  # weight sharing, no openings
    assert fresh["groups"]["embed"]["bytes"] == 2 * (4 * 40 + 40 * 16) * 8  # fresh triple: both opened
    assert fresh["groups"]["setup"]["bytes"] == 0
    assert main(argv[:2] + ["--tokens", "0"]) == 2
    with pytest.raises(SystemExit) as exit_:  # an unknown preset is refused by argparse (choices from PRESETS)
        main(argv[:1] + ["nonsense"] + argv[2:])
    assert exit_.value.code == 2
