"""Each approximation against a slow, obviously correct reference (Python loops), and mpcgen.ops on both backends."""

from __future__ import annotations

import math

import pytest
import torch

from mpcgen import approx, ops
from mpcgen.errors import MpcgenError

X = [-3.0, -1.5, -0.25, 0.0, 0.4, 1.0, 2.5]


@pytest.mark.parametrize("name,ref", [
    ("gelu", lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
    ("gelu_new", lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    ("relu", lambda x: max(x, 0.0)),
    ("quad", lambda x: 0.125 * x * x + 0.25 * x + 0.5),
])
def test_activation_formula(name, ref):
    got = approx.ACTIVATIONS[name](torch.tensor(X, dtype=torch.float64))
    for g, x in zip(got.tolist(), X):
        assert g == pytest.approx(ref(x), abs=1e-12)


SCORES = [[0.3, -1.2, 2.0, 0.7], [-0.5, 0.1, 1.4, -2.2], [1.1, 0.0, -0.3, 0.9]]
MASK = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]


def _rows(f):
    """Apply a per-row reference (scores, mask) -> probabilities."""
    return torch.tensor([f(s, m) for s, m in zip(SCORES, MASK)], dtype=torch.float64)


def _ref_softmax(s, m):
    z = sum(math.exp(x) for x, k in zip(s, m) if k)
    return [math.exp(x) / z if k else 0.0 for x, k in zip(s, m)]


def _ref_two_quad(s, m):
    z = sum((x + 5) ** 2 for x, k in zip(s, m) if k) + approx.TWO_QUAD_EPS
    return [(x + 5) ** 2 / z if k else 0.0 for x, k in zip(s, m)]


def _ref_two_quad_lite(s, m):
    n = max(sum(m), approx.TWO_QUAD_LITE_MIN_KEYS) * 25.0
    z = (sum((x + 5) ** 2 for x, k in zip(s, m) if k) + approx.TWO_QUAD_EPS) / n
    lo, hi, steps = approx.TWO_QUAD_LITE_RANGES["standard"]
    start = z * 3.8 * (lo + hi - z) / (lo + hi) ** 2  # a y0
    r = 1.0 / z * (1 - (1 - start) ** (2 ** steps))  # Newton squares the error
    return [(x + 5) ** 2 / n * r if k else 0.0 for x, k in zip(s, m)]


def _ref_two_relu(s, m):
    z = sum(max(x, 0) for x, k in zip(s, m) if k) + approx.TWO_RELU_EPS
    return [max(x, 0) / z if k else 0.0 for x, k in zip(s, m)]


def _ref_constant(s, m):
    z = sum(math.exp(x) for x in s)  # over ALL columns, masked ones included
    return [math.exp(x) / z if k else 0.0 for x, k in zip(s, m)]  # no renormalising


@pytest.mark.parametrize("name,ref", [("softmax", _ref_softmax), ("2quad", _ref_two_quad), ("2relu", _ref_two_relu),
                                      ("2quad-lite", _ref_two_quad_lite), ("constant", _ref_constant)])
def test_attention_formula(name, ref):
    got = approx.ATTENTIONS[name](torch.tensor(SCORES, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64))
    torch.testing.assert_close(got, _rows(ref), atol=1e-9, rtol=0)


def test_two_quad_row_at_minus_c_is_finite():
    # bfloat16 training rounds a lone visible score to exactly -c: 0 / 0 without the floor.
    got = approx.ATTENTIONS["2quad"](torch.tensor([[-5.0, 3.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(got).all() and got.abs().max() == 0


@pytest.mark.parametrize("name", sorted(approx.TWO_QUAD_LITE_RANGES))
def test_range_reciprocal_meets_its_bound_and_converges_up_to_lo_plus_hi(name):
    lo, hi, steps = approx.TWO_QUAD_LITE_RANGES[name]
    a = torch.linspace(lo, hi, 8001, dtype=torch.float64)
    err = (1 - a * ops.range_reciprocal(a, lo, hi, steps)).abs()
    assert err.max() <= (1 - 3.8 * lo * hi / (lo + hi) ** 2) ** (2 ** steps) + 1e-12 and err.max() < 0.023
    inside = a[(a >= 2 * lo) & (a <= hi / 3)]
    assert (1 - inside * ops.range_reciprocal(inside, lo, hi, steps)).abs().max() < 1e-3
    beyond = torch.tensor([0.02, lo + hi - 0.05], dtype=torch.float64)  # still convergent: more steps, less error
    errs = [(1 - beyond * ops.range_reciprocal(beyond, lo, hi, k)).abs() for k in (steps, steps + 4)]
    assert (errs[1] < errs[0]).all()
    assert ops.range_reciprocal(torch.tensor([lo + hi + 1.0]), lo, hi, steps).item() < 0  # past lo + hi: diverges


@pytest.mark.parametrize("name,spread", [("standard", 2.0), ("high", 4.0)])
def test_two_quad_lite_rows_sum_to_one_where_its_argument_is_in_range(name, spread):
    torch.manual_seed(0)
    s = torch.randn(4, 3, 12, 12, dtype=torch.float64) * spread
    mask = torch.tril(torch.ones(12, 12, dtype=torch.float64))
    p = approx.ATTENTIONS["2quad-lite"](s, mask, reciprocal_range=name)
    assert (p * (1 - mask)).abs().max() == 0
    n = mask.sum(-1).clamp(min=approx.TWO_QUAD_LITE_MIN_KEYS) * 25.0
    a = (((s + 5) ** 2 * mask).sum(-1) + approx.TWO_QUAD_EPS) / n
    lo, hi, _ = approx.TWO_QUAD_LITE_RANGES[name]
    inside = (a >= lo) & (a <= hi)
    assert inside.float().mean() > 0.75
    torch.testing.assert_close(p.sum(-1)[inside], torch.ones(int(inside.sum()), dtype=torch.float64), atol=0.023,
                               rtol=0)
    # Below the range (short rows, scores near -c) rows fall short of 1: the student trains with the same function.
    assert (p.sum(-1)[~inside] < 1.0).all()
    torch.testing.assert_close(p[inside], approx.ATTENTIONS["2quad"](s, mask)[inside], atol=0.023, rtol=0)


def test_two_quad_lite_guard_only_changes_rows_past_the_range():
    """The training guard: in range the exact inference formula; past the top the true 1 / a (rows sum to 1) with a
    finite gradient, where the unguarded Newton steps overflow."""
    torch.manual_seed(0)
    s = torch.randn(2, 2, 10, 10, dtype=torch.float64) * 2.0
    s[0, 0, 5, 2] = 120.0  # one sharp row: a ~ (125^2) / (8 * 25) ~ 78, past "standard"'s top (16) and lo + hi
    mask = torch.tril(torch.ones(10, 10, dtype=torch.float64))
    s.requires_grad_(True)
    plain = approx.two_quad_lite(s, mask)
    guarded = approx.two_quad_lite(s, mask, guard=True)
    assert not torch.isfinite(plain[0, 0, 5]).all() or (plain[0, 0, 5].sum() - 1).abs() > 0.5  # diverged
    rest = torch.ones_like(plain, dtype=torch.bool)
    rest[0, 0, 5] = False
    torch.testing.assert_close(guarded[rest], plain[rest], atol=0, rtol=0)
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(guarded[0, 0, 5].sum(), one, atol=1e-6, rtol=0)  # eps in the denominator
    guarded.square().sum().backward()
    assert torch.isfinite(s.grad).all()


def test_attention_core_guards_in_training_mode_only():
    from mpcgen.models.layers import AttentionCore

    core = AttentionCore("2quad-lite", scale=1.0)
    q = torch.zeros(1, 1, 4, 8)
    k = torch.zeros(1, 1, 4, 8)
    q[0, 0, 3, 0], k[0, 0, 1, 0] = 12.0, 10.0  # score 120 in row 3: past the range
    v = torch.randn(1, 1, 4, 8)
    mask = torch.tril(torch.ones(4, 4))
    core.train()
    assert torch.isfinite(core(q, k, v, mask)).all()
    core.eval()  # inference computes what MPC computes: the unguarded Newton steps
    assert not torch.allclose(core(q, k, v, mask)[0, 0, 3], core.train()(q, k, v, mask)[0, 0, 3])


def test_constant_rows_do_not_renormalise():
    got = approx.ATTENTIONS["constant"](torch.tensor(SCORES), torch.tensor(MASK, dtype=torch.float32))
    assert (got.sum(-1)[:-1] < 0.999).all()


def test_thex_formula():
    params = approx.reciprocal_mlp_init()
    params = {k: v.double() for k, v in params.items()}

    def r(x):  # the MLP by hand
        h1 = [max(x * params["recip_w1"][0, j].item() + params["recip_b1"][j].item(), 0) for j in range(16)]
        h2 = [max(sum(h1[i] * params["recip_w2"][i, j].item() for i in range(16)) + params["recip_b2"][j].item(), 0)
              for j in range(16)]
        return sum(h2[i] * params["recip_w3"][i, 0].item() for i in range(16)) + params["recip_b3"][0].item()

    def ref(s, m):
        e = [max(x / 2 + 1, 0) ** 3 if k else 0.0 for x, k in zip(s, m)]
        return [v * r(sum(e)) for v in e]

    got = approx.thex(torch.tensor(SCORES, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64), params)
    torch.testing.assert_close(got, _rows(ref), atol=1e-9, rtol=0)


def test_reciprocal_init_approximates_inverse():
    params = approx.reciprocal_mlp_init()
    x = torch.logspace(0, math.log10(1024), 200).view(-1, 1)
    rel = (approx.reciprocal_mlp(x, params) * x - 1).abs().max().item()
    assert rel < 0.07


def _ref_norm(kind, row, g, b, eps):
    d = len(row)
    mean = sum(row) / d
    if kind == "layernorm":
        var = sum((x - mean) ** 2 for x in row) / d
        return [(x - mean) / math.sqrt(var + eps) * gi + bi for x, gi, bi in zip(row, g, b)]
    if kind == "rmsnorm":
        ms = sum(x * x for x in row) / d
        return [x / math.sqrt(ms + eps) * gi for x, gi in zip(row, g)]
    if kind == "centered":
        return [(x - mean) * gi + bi for x, gi, bi in zip(row, g, b)]
    if kind == "affine":
        return [x * gi + bi for x, gi, bi in zip(row, g, b)]
    return list(row)


@pytest.mark.parametrize("kind", sorted(approx.NORMS))
def test_norm_formula(kind):
    x = torch.tensor(SCORES, dtype=torch.float64)
    g, b = torch.tensor([1.5, -0.5, 2.0, 0.3], dtype=torch.float64), torch.tensor([0.1, 0.2, -0.3, 0.0],
                                                                                    dtype=torch.float64)
    got = approx.NORMS[kind](x, g, b, 1e-5)
    ref = torch.tensor([_ref_norm(kind, r, g.tolist(), b.tolist(), 1e-5) for r in SCORES], dtype=torch.float64)
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=0)


def test_unknown_name_lists_registry():
    with pytest.raises(MpcgenError) as e:
        approx.lookup(approx.ATTENTIONS, "sofmax", "attention")
    assert str(sorted(approx.ATTENTIONS)) in str(e.value) and "attention='sofmax'" in str(e.value)


# ------------------------------------------------------------------------------------------------ ops, both backends


def test_ops_plain_and_secret(crypten):
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    enc = crypten.cryptensor(a)
    assert not ops.is_encrypted(a) and ops.is_encrypted(enc)
    torch.testing.assert_close(ops.cat([enc, b], dim=1).get_plain_text(), torch.cat([a, b], 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(ops.stack([enc, enc], dim=0).get_plain_text(), torch.stack([a, a]), atol=1e-3, rtol=0)
    oh_plain = ops.argmax_one_hot(a)
    assert torch.equal(oh_plain, ops.one_hot(a.argmax(-1), 4))
    hot = ops.argmax_one_hot(enc)
    torch.testing.assert_close(hot.get_plain_text(), oh_plain, atol=1e-3, rtol=0)
    table = torch.randn(4, 3)  # a secret one-hot must select float rows, not integer-rounded ones
    torch.testing.assert_close(hot.matmul(table).get_plain_text(), oh_plain.matmul(table), atol=1e-3, rtol=0)
    pub = torch.randn(3, 3)
    torch.testing.assert_close(ops.matmul(pub, enc).get_plain_text(), pub.matmul(a), atol=1e-2, rtol=0)
    torch.testing.assert_close(ops.mul(b, enc).get_plain_text(), a * b, atol=1e-2, rtol=0)
    torch.testing.assert_close(ops.add(b, enc).get_plain_text(), a + b, atol=1e-3, rtol=0)
    pos = torch.rand(5) * 4 + 0.5
    torch.testing.assert_close(ops.inv_sqrt(crypten.cryptensor(pos)).get_plain_text(), ops.inv_sqrt(pos),
                               atol=2e-2, rtol=0)
    xs = torch.linspace(-3.0, 3.0, 13)
    torch.testing.assert_close(ops.erf(crypten.cryptensor(xs)).get_plain_text(), ops.erf(xs), atol=2e-2, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "2quad", "2quad-lite", "2quad-lite-high", "2relu", "thex", "constant"])
def test_normalisers_secret_match_plain(crypten, name):
    torch.manual_seed(1)
    s = torch.randn(2, 2, 5, 5) * (4 if name.endswith("-high") else 2)
    mask = torch.tril(torch.ones(5, 5)).view(1, 1, 5, 5)  # (1, 1, T, S)
    params = approx.reciprocal_mlp_init() if name == "thex" else None
    options = {"reciprocal_range": "high"} if name.endswith("-high") else {}
    fn = approx.ATTENTIONS[name.removesuffix("-high")]
    plain = fn(s, mask, params, **options)
    secret = fn(crypten.cryptensor(s), mask, params, **options).get_plain_text()
    torch.testing.assert_close(secret, plain, atol=2e-2, rtol=0)
