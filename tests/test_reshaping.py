"""Tests of bmlr.reshaping (equations 3-8 of arXiv 2605.28869 and the ablation rules)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bmlr.reshaping import RULES, Reshaping, compute_reshaping, reshape_labels

# ----------------------------------------------------------------------------------------------
# Hand-computed two-modality example. Logits are log-probabilities, so softmax(logits) = p
# exactly and softmax(k * logits) = p^k / sum(p^k). alpha = 1, beta = 0.3 (1/beta = 3.33).
#
# sample 0, y = 0: p^a = (.8, .1, .1), p^v = (.4, .3, .3)
#   lambda^a = .8/.4 = 2, lambda^v = 1/2; 1 < 2 < 3.33 -> xi^a = 1 - 1/2 = 1/2, xi^v = 0
#   d^a = softmax(logits^v / (alpha lambda^v)) = softmax(2 logits^v) = (.16, .09, .09)/.34
#       = (8/17, 4.5/17, 4.5/17)
#   y~^a = 1/2 d^a + 1/2 e0 = (1/2 + 4/17, 4.5/34, 4.5/34);  y~^v = e0
# sample 1, y = 1: p^a = (.5, .3, .2), p^v = (.1, .6, .3)
#   lambda^v = .6/.3 = 2 -> xi^v = 1/2, xi^a = 0
#   d^v = softmax(2 logits^a) = (.25, .09, .04)/.38 = (25/38, 9/38, 4/38)   (top class 0: wrong)
#   y~^v = (25/76, 1/2 + 9/76, 4/76): the label still has the most mass;  y~^a = e1
# sample 2, y = 2: p^a = (.05, .05, .9), p^v = (.45, .45, .1)
#   lambda^a = .9/.1 = 9 > 1/beta -> xi^a = 0 (visual too weak to distil from); xi^v = 0
#   (with beta = 0: xi^a = 8/9, d^a = p^v^9/sum ~ (1/2, 1/2, 6.6e-7): top class wrong)
# sample 3, y = 1: p^a = p^v = (.2, .5, .3): lambda = 1 exactly -> xi = 0 for both
# ----------------------------------------------------------------------------------------------
HAND_Y = torch.tensor([0, 1, 2, 1])
HAND_PA = [(.8, .1, .1), (.5, .3, .2), (.05, .05, .9), (.2, .5, .3)]
HAND_PV = [(.4, .3, .3), (.1, .6, .3), (.45, .45, .1), (.2, .5, .3)]


def hand_logits(dtype=torch.float64):
    return {"audio": torch.tensor(HAND_PA, dtype=torch.float64).log().to(dtype),
            "visual": torch.tensor(HAND_PV, dtype=torch.float64).log().to(dtype)}


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_hand_computed_bmlr():
    r = compute_reshaping(HAND_Y, hand_logits(), alpha=1.0, beta=0.3)
    assert isinstance(r, Reshaping)
    torch.testing.assert_close(r.intensity["audio"], t([.5, 0, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.intensity["visual"], t([0, .5, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["audio"], t([[.5 + 4 / 17, 4.5 / 34, 4.5 / 34], [0, 1, 0], [0, 0, 1],
                                                     [0, 1, 0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t([[1, 0, 0], [25 / 76, .5 + 9 / 76, 4 / 76], [0, 0, 1],
                                                      [0, 1, 0]]), atol=1e-6, rtol=0)
    assert r.reshaped_count == {"audio": 1, "visual": 1}
    assert r.wrong_top_count == {"audio": 0, "visual": 0}
    assert r.partner["audio"].tolist() == [1, 1, 1, 1] and r.partner["visual"].tolist() == [0, 0, 0, 0]
    assert r.partner["audio"].dtype == torch.long
    # reshape_labels is the label part of the "bmlr" rule; float32 agrees to 1e-6 too
    for u, lab in reshape_labels(HAND_Y.clone(), hand_logits(torch.float32), 1.0, 0.3).items():
        assert lab.dtype == torch.float32
        torch.testing.assert_close(lab.double(), r.labels[u], atol=1e-6, rtol=0)


def test_hand_computed_d_and_lambda_via_vanilla():
    # "vanilla" exposes d where xi > 0; beta = 0 also reshapes sample 2 (lambda^a = 9, xi = 8/9).
    r = compute_reshaping(HAND_Y, hand_logits(), alpha=1.0, beta=0.0, rule="vanilla")
    torch.testing.assert_close(r.intensity["audio"], t([.5, 0, 8 / 9, 0]), atol=1e-6, rtol=0)
    d2 = np.array([.45, .45, .1]) ** 9
    torch.testing.assert_close(r.labels["audio"], t([[8 / 17, 4.5 / 17, 4.5 / 17], [0, 1, 0], list(d2 / d2.sum()),
                                                     [0, 1, 0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"][1], t([25 / 38, 9 / 38, 4 / 38]), atol=1e-6, rtol=0)
    assert r.wrong_top_count == {"audio": 1, "visual": 1}  # d^a of sample 2 ties 0/1; d^v of sample 1 is class 0
    # alpha = 4: 1/T = lambda/alpha = 1/2, d^a of sample 0 = sqrt(p^v) normalised
    r = compute_reshaping(HAND_Y, hand_logits(), alpha=4.0, beta=0.3, rule="vanilla")
    s = np.sqrt([.4, .3, .3])
    torch.testing.assert_close(r.labels["audio"][0], t(list(s / s.sum())), atol=1e-6, rtol=0)


def test_hand_computed_beta_zero_flips_top_class():
    # bmlr at beta = 0: sample 2 audio = 8/9 * (~1/2, ~1/2, ~0) + 1/9 e2 -> top class is not the label.
    r = compute_reshaping(HAND_Y, hand_logits(), alpha=1.0, beta=0.0)
    torch.testing.assert_close(r.labels["audio"][2], t([4 / 9, 4 / 9, 1 / 9]), atol=1e-6, rtol=0)
    assert r.reshaped_count == {"audio": 2, "visual": 1}
    assert r.wrong_top_count == {"audio": 1, "visual": 0}


def test_three_modalities_hand_computed():
    # y = 0; confidences text .8, audio .2, vision .4 -> strongest text, intermediate vision, weakest audio.
    # text vs vision: lambda = 2 -> xi = 1/2, d = softmax(2 logits^vision) = (.16, .09, .09)/.34
    # audio vs vision: lambda = 1/2 -> not reshaped; vision keeps one-hot, partner itself (index 2).
    # Sample 1 (y = 2): all equal -> stable order text, audio, vision; intermediate = audio (index 1).
    logits = {"text": t([[.8, .1, .1], [.3, .3, .4]]).log(), "audio": t([[.2, .4, .4], [.3, .3, .4]]).log(),
              "vision": t([[.4, .3, .3], [.3, .3, .4]]).log()}
    r = compute_reshaping(torch.tensor([0, 2]), logits, alpha=1.0, beta=0.1)
    assert r.partner["text"].tolist() == [2, 1]
    assert r.partner["audio"].tolist() == [2, 1]
    assert r.partner["vision"].tolist() == [2, 1]
    torch.testing.assert_close(r.intensity["text"], t([.5, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["text"][0], t([.5 + 4 / 17, 4.5 / 34, 4.5 / 34]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["audio"], t([[1, 0, 0], [0, 0, 1]]), atol=0, rtol=0)
    torch.testing.assert_close(r.labels["vision"], t([[1, 0, 0], [0, 0, 1]]), atol=0, rtol=0)
    assert r.reshaped_count == {"text": 1, "audio": 0, "vision": 0}


# ----------------------------------------------------------------------------------------------
# Rules, hand-computed on the same four samples (alpha = 1, beta = 0.3).
# ----------------------------------------------------------------------------------------------
def test_rule_vanilla():
    r = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="vanilla")
    torch.testing.assert_close(r.labels["audio"], t([[8 / 17, 4.5 / 17, 4.5 / 17], [0, 1, 0], [0, 0, 1],
                                                     [0, 1, 0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t([[1, 0, 0], [25 / 38, 9 / 38, 4 / 38], [0, 0, 1],
                                                      [0, 1, 0]]), atol=1e-6, rtol=0)
    assert r.reshaped_count == {"audio": 1, "visual": 1}
    assert r.wrong_top_count == {"audio": 0, "visual": 1}  # d^v of sample 1 has top class 0


def test_rule_uniform():
    # xi = 1/2: 1/2 * (1/3, 1/3, 1/3) + 1/2 e_y -> (2/3 on the label, 1/6 elsewhere)
    r = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="uniform")
    torch.testing.assert_close(r.labels["audio"], t([[2 / 3, 1 / 6, 1 / 6], [0, 1, 0], [0, 0, 1], [0, 1, 0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t([[1, 0, 0], [1 / 6, 2 / 3, 1 / 6], [0, 0, 1], [0, 1, 0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(r.intensity["audio"], t([.5, 0, 0, 0]), atol=1e-6, rtol=0)


def test_rule_distill():
    # Every sample: audio target = p^v, visual target = p^a (T = 1), intensity 1.
    # Wrong top: audio sample 2 (p^v = (.45, .45, .1), y = 2); visual sample 1 (p^a = (.5, .3, .2), y = 1).
    r = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="distill")
    torch.testing.assert_close(r.labels["audio"], t(HAND_PV), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t(HAND_PA), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.intensity["audio"], t([1, 1, 1, 1]), atol=0, rtol=0)
    assert r.reshaped_count == {"audio": 4, "visual": 4}
    assert r.wrong_top_count == {"audio": 1, "visual": 1}


def test_rule_distill_with_label_weight_mixes_in_the_one_hot():
    # w = 0.5: audio target = (y + p^v) / 2, visual = (y + p^a) / 2, intensity 1 - w = 0.5.
    # Audio sample 2: (0, 0, 1)/2 + (.45, .45, .1)/2 = (.225, .225, .55): the label is on top again.
    r = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="distill", label_weight=0.5)
    torch.testing.assert_close(r.labels["audio"], t([[.7, .15, .15], [.05, .8, .15], [.225, .225, .55],
                                                     [.1, .75, .15]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t([[.9, .05, .05], [.25, .65, .1], [.025, .025, .95],
                                                      [.1, .75, .15]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.intensity["visual"], t([.5, .5, .5, .5]), atol=0, rtol=0)
    assert r.reshaped_count == {"audio": 4, "visual": 4} and r.wrong_top_count == {"audio": 0, "visual": 0}
    one_hot = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="distill", label_weight=1.0)
    torch.testing.assert_close(one_hot.labels["audio"], torch.nn.functional.one_hot(HAND_Y, 3).double())
    assert one_hot.reshaped_count == {"audio": 0, "visual": 0}


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "half"])
def test_rule_distill_rejects_label_weight_outside_unit_interval(weight):
    with pytest.raises(ValueError, match="label_weight"):
        compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3, rule="distill", label_weight=weight)


def test_rule_distill_three_modalities_keeps_intermediate():
    logits = {"t": t([[.8, .1, .1]]).log(), "a": t([[.2, .4, .4]]).log(), "v": t([[.4, .3, .3]]).log()}
    r = compute_reshaping(torch.tensor([0]), logits, 1.0, 0.5, rule="distill")
    torch.testing.assert_close(r.labels["t"], t([[.4, .3, .3]]))
    torch.testing.assert_close(r.labels["a"], t([[.4, .3, .3]]))
    torch.testing.assert_close(r.labels["v"], t([[1, 0, 0]]))
    assert r.reshaped_count == {"t": 1, "a": 1, "v": 0}


# ----------------------------------------------------------------------------------------------
# Independent reference: plain float64 numpy, one sample at a time, divisions of probabilities.
# ----------------------------------------------------------------------------------------------
def softmax_np(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def reference(targets, logits, alpha, beta):
    names = list(logits)
    z = {u: logits[u].numpy() for u in names}
    out = {u: np.zeros_like(z[u]) for u in names}
    xis = {u: np.zeros(len(targets)) for u in names}
    partners = {u: np.zeros(len(targets), dtype=int) for u in names}
    for i, y in enumerate(targets.tolist()):
        p = {u: softmax_np(z[u][i]) for u in names}
        if len(names) == 2:
            pair = {names[0]: names[1], names[1]: names[0]}
        else:
            ranked = sorted(names, key=lambda u: -p[u][y])  # python sort is stable
            strong, mid, weak = ranked
            pair = {strong: mid, weak: mid, mid: mid}
        for u in names:
            w = pair[u]
            partners[u][i] = names.index(w)
            onehot = np.eye(len(p[u]))[y]
            lam_u = p[u][y] / p[w][y]                # equation 4
            lam_w = p[w][y] / p[u][y]                # the partner's lambda
            d = softmax_np(z[w][i] / (alpha * lam_w))  # equation 5
            upper = math.inf if beta == 0 else 1 / beta
            xi = 1 - 1 / lam_u if (w != u and 1 < lam_u < upper) else 0.0  # equation 7
            out[u][i] = xi * d + (1 - xi) * onehot   # equation 8
            xis[u][i] = xi
    return out, xis, partners


@pytest.mark.parametrize("num_mod", [2, 3])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
def test_matches_reference(num_mod, alpha, beta):
    gen = torch.Generator().manual_seed(1000 * num_mod + int(10 * alpha) + int(100 * beta))
    n, c = 40, 5
    names = ["audio", "visual", "text"][:num_mod]
    logits = {u: torch.randn(n, c, generator=gen, dtype=torch.float64) * s for u, s in zip(names, [2.0, 1.0, 3.0])}
    y = torch.randint(0, c, (n,), generator=gen)
    labels, xis, partners = reference(y, logits, alpha, beta)
    r = compute_reshaping(y, logits, alpha, beta)
    assert list(r.labels) == names
    for u in names:
        np.testing.assert_allclose(r.labels[u].numpy(), labels[u], atol=1e-9, rtol=0)
        np.testing.assert_allclose(r.intensity[u].numpy(), xis[u], atol=1e-12, rtol=0)
        np.testing.assert_array_equal(r.partner[u].numpy(), partners[u])
        assert r.reshaped_count[u] == int((xis[u] > 0).sum())
        wrong = [(xis[u][i] > 0) and labels[u][i, y[i]] < labels[u][i].max() - 1e-12 for i in range(n)]
        assert r.wrong_top_count[u] == sum(wrong)
    if 0 < beta < 1:  # the random data actually exercises reshaping
        assert sum(r.reshaped_count.values()) > 0
    # float32 path agrees with the float64 reference
    r32 = reshape_labels(y, {u: z.float() for u, z in logits.items()}, alpha, beta)
    for u in names:
        assert r32[u].dtype == torch.float32
        np.testing.assert_allclose(r32[u].double().numpy(), labels[u], atol=1e-4, rtol=0)


def test_three_modalities_weakest_never_reshaped():
    gen = torch.Generator().manual_seed(7)
    logits = {u: torch.randn(200, 4, generator=gen) * 3 for u in ("t", "a", "v")}
    y = torch.randint(0, 4, (200,), generator=gen)
    r = compute_reshaping(y, logits, 1.0, 0.0)
    conf = torch.stack([z.softmax(-1).gather(1, y[:, None])[:, 0] for z in logits.values()])
    xi = torch.stack(list(r.intensity.values()))
    strongest = conf.argmax(0)
    assert bool(((xi > 0).sum(0) <= 1).all())             # at most one modality per sample
    assert bool((xi.argmax(0)[xi.amax(0) > 0] == strongest[xi.amax(0) > 0]).all())
    assert xi.gather(0, conf.argmin(0)[None]).abs().max() == 0
    assert sum(r.reshaped_count.values()) > 50


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------
def test_beta_one_gives_one_hot_and_beta_zero_has_no_upper_bound():
    gen = torch.Generator().manual_seed(3)
    logits = {"a": torch.randn(64, 6, generator=gen) * 4, "v": torch.randn(64, 6, generator=gen)}
    y = torch.randint(0, 6, (64,), generator=gen)
    r = compute_reshaping(y, logits, 1.0, 1.0)
    for u in logits:
        assert torch.equal(r.labels[u], torch.nn.functional.one_hot(y, 6).float())
        assert r.reshaped_count[u] == 0 and r.intensity[u].abs().max() == 0
    r0 = compute_reshaping(y, logits, 1.0, 0.0)
    loglam = logits["a"].log_softmax(-1).gather(1, y[:, None])[:, 0] - \
        logits["v"].log_softmax(-1).gather(1, y[:, None])[:, 0]
    assert r0.reshaped_count["a"] == int((loglam > 0).sum())
    assert r0.reshaped_count["v"] == int((loglam < 0).sum())


def test_underflowed_confidence_is_finite():
    # p^a_y = e^-200 underflows in float32; log lambda^v ~ 199.6 -> xi^v = 1 and
    # d^v = softmax(logits^a * lambda^v / alpha) -> (0, 1/2, 1/2).
    logits = {"a": torch.tensor([[-200.0, 0.0, 0.0], [0.0, -200.0, 0.0]]), "v": torch.zeros(2, 3)}
    y = torch.tensor([0, 2])
    for rule in RULES:
        r = compute_reshaping(y, logits, 0.5, 0.0, rule=rule)
        for u in logits:
            lab = r.labels[u]
            assert torch.isfinite(lab).all() and (lab >= 0).all()
            torch.testing.assert_close(lab.sum(-1), torch.ones(2))
            assert torch.isfinite(r.intensity[u]).all()
    r = compute_reshaping(y, logits, 0.5, 0.0)
    torch.testing.assert_close(r.labels["v"][0], torch.tensor([0.0, 0.5, 0.5]))
    torch.testing.assert_close(r.intensity["v"], torch.tensor([1.0, 0.0]))
    # sample 1 (y = 2): lambda^a = (1/2)/(1/3) = 3/2 -> xi^a = 1/3, d^a = softmax(0 * 3) = uniform
    torch.testing.assert_close(r.labels["a"][1], torch.tensor([1 / 9, 1 / 9, 7 / 9]))
    r64 = compute_reshaping(y, {u: z.double() for u, z in logits.items()}, 0.5, 0.0)
    for u in logits:
        torch.testing.assert_close(r.labels[u].double(), r64.labels[u], atol=1e-6, rtol=0)
    # with a beta > 0 such an extreme ratio is above 1/beta: nothing reshaped
    assert compute_reshaping(y, logits, 0.5, 1e-6).reshaped_count["v"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    ref = compute_reshaping(HAND_Y, {u: z.to(dtype).float() for u, z in hand_logits().items()}, 1.0, 0.3)
    r = compute_reshaping(HAND_Y, hand_logits(dtype), 1.0, 0.3)
    for u in r.labels:
        assert r.labels[u].dtype == torch.float32 and r.intensity[u].dtype == torch.float32
        torch.testing.assert_close(r.labels[u], ref.labels[u], atol=0, rtol=0)
    assert r.reshaped_count == {"audio": 1, "visual": 1}


def test_float64_in_float64_out():
    r = compute_reshaping(HAND_Y, hand_logits(), 1.0, 0.3)
    assert all(v.dtype == torch.float64 for v in [*r.labels.values(), *r.intensity.values()])


def test_inputs_requiring_grad():
    logits = {u: z.float().requires_grad_(True) for u, z in hand_logits().items()}
    for rule in RULES:
        r = compute_reshaping(HAND_Y, logits, 1.0, 0.3, rule=rule)
        for u in logits:
            assert not r.labels[u].requires_grad and not r.intensity[u].requires_grad
            assert logits[u].grad is None
    # the targets are usable in a loss that backpropagates only through the logits
    labels = reshape_labels(HAND_Y, logits, 1.0, 0.3)
    loss = -(labels["audio"] * logits["audio"].log_softmax(-1)).sum()
    loss.backward()
    assert logits["audio"].grad is not None and logits["visual"].grad is None


def test_empty_batch():
    r = compute_reshaping(torch.zeros(0, dtype=torch.long), {"a": torch.zeros(0, 3), "v": torch.zeros(0, 3)},
                          1.0, 0.5)
    assert r.labels["a"].shape == (0, 3) and r.reshaped_count == {"a": 0, "v": 0}


# ----------------------------------------------------------------------------------------------
# Invariants on random inputs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_mod", [2, 3])
@pytest.mark.parametrize("rule", RULES)
def test_invariants(num_mod, rule):
    gen = torch.Generator().manual_seed(11 + num_mod)
    n, c = 300, 7
    names = ["a", "v", "t"][:num_mod]
    logits = {u: torch.randn(n, c, generator=gen) * (1 + 2 * k) for k, u in enumerate(names)}
    y = torch.randint(0, c, (n,), generator=gen)
    for alpha in (0.1, 1.0, 5.0):
        for beta in (0.0, 0.2, 0.5, 0.7, 1.0):
            r = compute_reshaping(y, logits, alpha, beta, rule=rule)
            for u in names:
                lab, xi = r.labels[u], r.intensity[u]
                assert lab.shape == (n, c) and xi.shape == (n,) and r.partner[u].shape == (n,)
                assert (lab >= 0).all()
                torch.testing.assert_close(lab.sum(-1), torch.ones(n))
                assert r.reshaped_count[u] == int((xi > 0).sum())
                on_label = lab.gather(1, y[:, None])[:, 0]
                wrong = (xi > 0) & (on_label < lab.amax(-1))
                assert r.wrong_top_count[u] == int(wrong.sum())
                assert torch.equal(lab[xi == 0], torch.nn.functional.one_hot(y[xi == 0], c).float())
                if rule == "distill":
                    continue
                assert (xi >= 0).all() and (xi < 1 - beta + 1e-6).all()   # xi = 1 - 1/lambda < 1 - beta
                if rule in ("bmlr", "uniform"):
                    assert (on_label >= 1 - xi - 1e-6).all()               # the label keeps >= 1 - xi
                    assert (on_label[xi > 0] > beta - 1e-6).all()          # hence > beta
                if rule == "bmlr" and beta >= 0.5:                         # IMPLEMENTATION-NOTES 2
                    assert bool((lab.argmax(-1) == y).all()) and r.wrong_top_count[u] == 0
            if rule != "distill":
                xi_all = torch.stack([r.intensity[u] for u in names])
                assert bool(((xi_all > 0).sum(0) <= 1).all())              # one reshaped modality per sample


# ----------------------------------------------------------------------------------------------
# Invalid arguments
# ----------------------------------------------------------------------------------------------
def _good():
    return torch.tensor([0, 1]), {"a": torch.zeros(2, 3), "v": torch.zeros(2, 3)}


@pytest.mark.parametrize("kwargs,name", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"alpha": float("nan")}, "alpha"),
    ({"alpha": float("inf")}, "alpha"), ({"alpha": "big"}, "alpha"), ({"alpha": None}, "alpha"),
    ({"beta": -0.1}, "beta"), ({"beta": 1.1}, "beta"), ({"beta": float("nan")}, "beta"),
    ({"beta": float("inf")}, "beta"), ({"beta": "x"}, "beta"),
    ({"rule": "label_smoothing"}, "rule"), ({"rule": None}, "rule"),
])
def test_invalid_scalars(kwargs, name):
    y, logits = _good()
    args = {"alpha": 1.0, "beta": 0.5, "rule": "bmlr", **kwargs}
    with pytest.raises(ValueError, match=name) as err:
        compute_reshaping(y, logits, args["alpha"], args["beta"], rule=args["rule"])
    assert repr(kwargs[name]) in str(err.value)  # names the bad value too


@pytest.mark.parametrize("case", ["one_modality", "four_modalities", "not_dict", "mismatched_n", "mismatched_c",
                                  "one_d_logits", "int_logits", "targets_2d", "targets_float", "targets_short",
                                  "target_negative", "target_too_big"])
def test_invalid_tensors(case):
    y, logits = _good()
    name = "unimodal_logits"
    if case == "one_modality":
        logits = {"a": logits["a"]}
    elif case == "four_modalities":
        logits = {u: torch.zeros(2, 3) for u in "abcd"}
    elif case == "not_dict":
        logits = [logits["a"], logits["v"]]
    elif case == "mismatched_n":
        logits["v"] = torch.zeros(3, 3)
    elif case == "mismatched_c":
        logits["v"] = torch.zeros(2, 4)
    elif case == "one_d_logits":
        logits = {"a": torch.zeros(3), "v": torch.zeros(3)}
    elif case == "int_logits":
        logits = {"a": torch.zeros(2, 3, dtype=torch.long), "v": torch.zeros(2, 3, dtype=torch.long)}
    else:
        name = "targets"
        y = {"targets_2d": torch.tensor([[0], [1]]), "targets_float": torch.tensor([0.0, 1.0]),
             "targets_short": torch.tensor([0]), "target_negative": torch.tensor([0, -1]),
             "target_too_big": torch.tensor([0, 3])}[case]
    with pytest.raises(ValueError, match=name):
        compute_reshaping(y, logits, 1.0, 0.5)
    with pytest.raises(ValueError, match=name):
        reshape_labels(y, logits, 1.0, 0.5)
