"""MMPareto, PMR and AGM: each method's rule on hand-checkable numbers, its gradients on a
tiny model (checked against independently computed gradients), three modalities, and a
short end-to-end training through the real Trainer."""
from __future__ import annotations

import math

import pytest
import torch

from bmlr.config import from_dict
from bmlr.engine import Trainer
from bmlr.methods import METHODS
from bmlr.methods.agm import agm_coefficients, coalition_outputs, ratios, response_scores, shapley_responses
from bmlr.methods.base import hard_cross_entropy
from bmlr.methods.mmpareto import (combined_gradient, encoder_parameters, min_norm_weight, pareto_weights)
from bmlr.methods.pmr import PrototypeBank, entropy, imbalance_coefficients, prototype_logits, prototype_scores
from bmlr.models import build_model
from method_helpers import C, L3, grads, tiny_model

def three_modality_model(fusion: str = "concat"):
    torch.manual_seed(0)
    return build_model({u: ("mlp", {"d_in": 6, "hidden": 8, "layers": 1, "dropout": 0.0})
                        for u in ("audio", "visual", "text")}, fusion, C)


def batch(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(n, 1, 24, 24, generator=g), "visual": torch.randn(n, 2, 3, 24, 24, generator=g)}
    return inputs, torch.arange(n) % C


def vector_batch(n: int = 10):
    g = torch.Generator().manual_seed(2)
    return {u: torch.randn(n, 6, generator=g) for u in ("audio", "visual", "text")}, torch.arange(n) % C


def make(name: str, fusion: str = "concat", **method_args):
    return METHODS.get(name)(from_dict({"method": name, "fusion": fusion, "method_args": method_args}))


def backward(method, model, result):
    """The Trainer's backward: fresh gradients of the loss, then the method's hook."""
    model.zero_grad(set_to_none=True)
    result.loss.backward(retain_graph=True)
    before = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    method.after_backward(model)
    return before


def test_registered_with_arguments_checked():
    for name in ("mmpareto", "pmr", "agm"):
        assert name in METHODS and METHODS.get(name).reads == ()
        with pytest.raises(ValueError, match="bogus"):
            make(name, bogus=1)
    with pytest.raises(ValueError, match="gamma"):
        make("mmpareto", gamma=0)
    with pytest.raises(ValueError, match="momentum_coef"):
        make("pmr", momentum_coef=1.0)
    with pytest.raises(ValueError, match="coeff_form"):
        make("pmr", coeff_form="nope")
    with pytest.raises(ValueError, match="modulation_ends"):
        make("agm", modulation_starts=5, modulation_ends=1)


# --- MMPareto ---------------------------------------------------------------------------

def test_mmpareto_min_norm_weights_by_hand():
    # g1 = (1, 0), g2 = (-1, 1): c = (g2.g2 - g1.g2) / |g1 - g2|^2 = (2 + 1) / 5 = 0.6
    g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    w_mm, w_uni, conflict = pareto_weights(g1, g2)
    assert conflict and (w_mm, w_uni) == pytest.approx((0.6, 0.4))
    mix = w_mm * g1[0] + w_uni * g2[0]  # (0.2, 0.4): orthogonal to g1 - g2, so the norm is minimal
    assert float(mix @ (g1[0] - g2[0])) == pytest.approx(0.0, abs=1e-7)
    # new = 2 * mix = (0.4, 0.8), |new| = sqrt(0.8) < |g1 + g2| = 1: scaled up to norm 1, then gamma 1.5
    out = combined_gradient(g1[0], g2[0], g1[0] + g2[0], (w_mm, w_uni), gamma=1.5, rescale=True)
    torch.testing.assert_close(out, 1.5 / math.sqrt(0.8) * torch.tensor([0.4, 0.8]))
    no_rescale = combined_gradient(g1[0], g2[0], g1[0] + g2[0], (w_mm, w_uni), gamma=1.5, rescale=False)
    torch.testing.assert_close(no_rescale, torch.tensor([0.6, 1.2]))
    # the solver's edges (the public min_norm_solvers: 0.999 / 0.001) and two zero vectors
    assert min_norm_weight(1.0, 1.0, 4.0) == 0.999 and min_norm_weight(4.0, 1.0, 1.0) == 0.001
    assert min_norm_weight(0.0, 0.0, 0.0) == 0.5


def test_mmpareto_conflict_and_no_conflict():
    g1 = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]  # two tensors, one encoder: cos over the concatenation
    agree = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    assert pareto_weights(g1, agree) == (0.5, 0.5, False)
    # no conflict: new = g_mm + g_u = the plain sum, whose norm it keeps: 1.5 * (2, 1)
    out = combined_gradient(g1[0], agree[0], g1[0] + agree[0], (0.5, 0.5), gamma=1.5, rescale=True)
    torch.testing.assert_close(out, torch.tensor([3.0, 1.5]))
    orthogonal = [torch.tensor([0.0, 2.0]), torch.tensor([0.0])]  # cos = 0 counts as a conflict
    w_mm, w_uni, conflict = pareto_weights(g1, orthogonal)
    assert conflict and (w_mm, w_uni) == pytest.approx((0.8, 0.2))  # (4 - 0) / (1 + 4)


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_mmpareto_sets_each_encoder_gradient_from_its_two_losses(fusion):
    model, method = tiny_model(fusion), make("mmpareto", fusion)
    inputs, labels = batch()
    result = method.training_step(model, inputs, labels)
    assert set(result.losses) == {"fused", "audio", "visual"}
    encoders = encoder_parameters(model)
    expected = {}
    for u, params in encoders.items():
        g_mm, g_u = grads(result.losses["fused"], params), grads(result.losses[u], params)
        weights = pareto_weights(g_mm, g_u)
        conflict = weights[2]
        assert result.stats[f"pareto_conflict/{u}"] == (len(labels) if conflict else 0)
        expected[u] = [combined_gradient(a, b, a + b, weights[:2], 1.5, True) for a, b in zip(g_mm, g_u)]
    before = backward(method, model, result)
    for u, params in encoders.items():
        for p, want, of_sum in zip(params, expected[u], grads(result.loss, params)):
            torch.testing.assert_close(before[id(p)], of_sum)  # L's gradient there = g_mm + g_u
            torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
    encoder_ids = {id(p) for ps in encoders.values() for p in ps}
    for p in model.parameters():  # the fused head and the unimodal heads keep the plain gradient of L
        if id(p) not in encoder_ids and p.grad is not None:
            assert torch.equal(p.grad, before[id(p)])


# --- PMR --------------------------------------------------------------------------------

def test_pmr_prototype_distances_scores_and_coefficient_by_hand():
    labels = torch.tensor([0, 1])
    audio = prototype_logits(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    torch.testing.assert_close(audio, torch.tensor([[0.0, -5.0], [-5.0, 0.0]]))  # -|z - c_k|
    visual = prototype_logits(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # every distance 1
    scores = prototype_scores({"audio": audio, "visual": visual}, labels)
    p = 1 / (1 + math.exp(-5))  # softmax([0, -5])[0] = 0.9933071
    assert scores == pytest.approx({"audio": 2 * p, "visual": 1.0})
    # rho = s_dom / s_slow = 1.9866; visual is slow: r = clip(rho - 1, 0, 1) = 0.98661, audio 0
    assert imbalance_coefficients(scores) == pytest.approx({"audio": 0.0, "visual": 2 * p - 1})
    assert imbalance_coefficients(scores, "binary") == {"audio": 0.0, "visual": 1.0}
    assert imbalance_coefficients({"a": 3.0, "b": 1.0}) == {"a": 0.0, "b": 1.0}  # rho 3: clipped at 1
    assert float(hard_cross_entropy(visual, labels)) == pytest.approx(math.log(2))  # PCE of the slow one
    assert float(entropy(visual)) == pytest.approx(math.log(2))
    q = 1 - p
    assert float(entropy(audio)) == pytest.approx(-(p * math.log(p) + q * math.log(q)), rel=1e-5)
    with pytest.raises(ValueError, match="coeff_form"):
        imbalance_coefficients(scores, "nope")


def test_pmr_terms_by_hand():
    method = make("pmr", alpha_pmr=2.0, mu=0.5)
    labels = torch.tensor([0, 1])
    features = {"audio": torch.tensor([[0.0, 0.0], [3.0, 4.0]]), "visual": torch.zeros(2, 2)}
    prototypes = {"audio": torch.tensor([[0.0, 0.0], [3.0, 4.0]]), "visual": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    terms, coeffs = method.pmr_terms(features, prototypes, labels)
    r = 2 / (1 + math.exp(-5)) - 1
    assert coeffs == pytest.approx({"audio": 0.0, "visual": 2.0 * r})
    assert set(terms) == {"pce/visual", "entropy/audio"}
    assert float(terms["pce/visual"]) == pytest.approx(2.0 * r * math.log(2))
    audio_entropy = float(entropy(prototype_logits(features["audio"], prototypes["audio"])))
    assert float(terms["entropy/audio"]) == pytest.approx(-0.5 * r * audio_entropy)
    method.epoch = 10  # past entropy_epochs (10 from epoch 0): only the prototypical CE
    assert set(method.pmr_terms(features, prototypes, labels)[0]) == {"pce/visual"}


def test_pmr_prototypes_running_then_per_epoch_with_momentum():
    bank = PrototypeBank(momentum=0.2)
    labels = torch.tensor([0, 1])
    bank.add({"a": torch.tensor([[1.0], [3.0]])}, labels, 2)
    torch.testing.assert_close(bank.current()["a"], torch.tensor([[1.0], [3.0]]))  # first epoch: running means
    bank.add({"a": torch.tensor([[3.0], [5.0]])}, labels, 2)
    torch.testing.assert_close(bank.current()["a"], torch.tensor([[2.0], [4.0]]))
    bank.close_epoch()
    torch.testing.assert_close(bank.current()["a"], torch.tensor([[2.0], [4.0]]))
    bank.add({"a": torch.tensor([[4.0]])}, torch.tensor([0]), 2)  # class 1 absent this epoch
    torch.testing.assert_close(bank.current()["a"], torch.tensor([[2.0], [4.0]]))  # last epoch's, all epoch
    bank.close_epoch()  # class 0: 0.8 * 4 + 0.2 * 2; class 1 keeps its prototype
    torch.testing.assert_close(bank.current()["a"], torch.tensor([[3.6], [4.0]]))
    fresh = PrototypeBank(0.2)
    fresh.add({"a": torch.tensor([[1.0]])}, torch.tensor([0]), 2)
    assert fresh.current() is None  # not every class seen: the PMR terms stay off
    fresh.load_state_dict(bank.state_dict())
    torch.testing.assert_close(fresh.current()["a"], torch.tensor([[3.6], [4.0]]))


def test_pmr_terms_reach_only_their_encoder():
    model, method = tiny_model(), make("pmr", coeff_form="binary")
    method.on_epoch_start(model, 0)
    inputs, labels = batch()
    result = method.training_step(model, inputs, labels)
    assert result.stats["pmr_active"] == len(labels)
    groups = model.parameter_groups()
    pce = [k for k in result.losses if k.startswith("pce/")]
    ent = [k for k in result.losses if k.startswith("entropy/")]
    assert len(pce) == 1 and len(ent) == 1 and pce[0][4:] != ent[0][8:]  # slow and dominant differ
    for key in pce + ent:
        u = key.split("/")[1]
        assert any(g.abs().sum() > 0 for g in grads(result.losses[key], groups[u]))
        for other in [w for w in groups if w != u]:  # the other encoder and the fused head: nothing
            assert all(g.abs().sum() == 0 for g in grads(result.losses[key], groups[other]))


# --- AGM --------------------------------------------------------------------------------

def test_agm_two_modality_shapley_by_hand():
    values = {frozenset({"a"}): torch.tensor([1.0, 0.0]), frozenset({"v"}): torch.tensor([0.0, 2.0]),
              frozenset({"a", "v"}): torch.tensor([3.0, 3.0])}
    phi = shapley_responses(values, ["a", "v"])
    torch.testing.assert_close(phi["a"], torch.tensor([2.0, 0.5]))  # (v(a) + v(av) - v(v)) / 2
    torch.testing.assert_close(phi["v"], torch.tensor([1.0, 2.5]))  # (v(v) + v(av) - v(a)) / 2
    torch.testing.assert_close(phi["a"] + phi["v"], values[frozenset({"a", "v"})])


@pytest.mark.parametrize("three", [False, True])
def test_agm_responses_of_concat_are_equation_3_logits(three):
    model = three_modality_model() if three else tiny_model()
    inputs = vector_batch()[0] if three else batch()[0]
    with torch.no_grad():
        features = model.encode(inputs)
        values = coalition_outputs(model.fusion, features)
        phi = shapley_responses(values, model.modalities)
        eq3 = model.fusion.unimodal_logits(features)  # W^u z^u + b / |M|
    assert len(values) == 2 ** len(model.modalities) - 1
    for u in model.modalities:
        torch.testing.assert_close(phi[u], eq3[u], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sum(phi.values()), model.fusion(features), rtol=1e-5, atol=1e-5)


def test_agm_scores_ratios_and_coefficients_by_hand():
    labels = torch.tensor([0])
    assert response_scores({"a": torch.tensor([[L3, 0.0]])}, labels) == pytest.approx({"a": -math.log(0.75)})
    # two modalities: r^a = exp(s^v - s^a); running scores 0 give targets R = 1
    assert ratios({"a": 0.5, "v": 1.5}) == pytest.approx({"a": math.e, "v": 1 / math.e})
    k = agm_coefficients({"a": 0.5, "v": 1.5}, {"a": 0.0, "v": 0.0}, alpha=1.0)
    assert k == pytest.approx({"a": math.exp(1 - math.e), "v": math.exp(1 - 1 / math.e)})  # 0.17937, 1.88160
    assert agm_coefficients({"a": 0.5, "v": 1.5}, {"a": 0.5, "v": 1.5}, alpha=3.0) == pytest.approx({"a": 1, "v": 1})
    # the authors' cap: R - r at most 10 in the exponent
    assert agm_coefficients({"a": 1.0, "v": 1.0}, {"a": 0.0, "v": 20.0}, 0.5)["a"] == pytest.approx(math.exp(5.0))
    # three modalities: r^u = exp(3/2 * (mean - s^u))
    assert ratios({"a": 1.0, "b": 2.0, "c": 3.0}) == pytest.approx({"a": math.exp(1.5), "b": 1.0, "c": math.exp(-1.5)})
    with pytest.raises(ValueError, match="agm"):
        ratios({"a": 1.0})


@pytest.mark.parametrize("epoch, modulated", [(0, True), (21, False)])
def test_agm_scales_each_encoder_gradient_by_its_coefficient(epoch, modulated):
    model, method = tiny_model(), make("agm", alpha_agm=1.0)
    method.on_epoch_start(model, epoch)
    inputs, labels = batch()
    result = method.training_step(model, inputs, labels)
    coeffs = method.last_coefficients
    features = model.encode(inputs)
    plain = hard_cross_entropy(model.fusion(features), labels)  # the fused loss, unmodulated
    assert float(result.loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    if modulated:
        s = response_scores(model.fusion.unimodal_logits(features), labels)
        assert coeffs == pytest.approx(agm_coefficients(s, {"audio": 0.0, "visual": 0.0}, 1.0), rel=1e-4)
        assert all(k != 1.0 for k in coeffs.values())
    else:
        assert coeffs == {"audio": 1.0, "visual": 1.0}
    groups = model.parameter_groups()
    for u in model.modalities:
        for got, want in zip(grads(result.loss, groups[u]), grads(plain, groups[u])):
            # float32 through two different graphs: entries near zero differ by rounding, so the
            # absolute tolerance follows the tensor's scale (a wrong coefficient is off by percents)
            torch.testing.assert_close(got, coeffs[u] * want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert method.iteration == 1 and method.running == pytest.approx(
        response_scores(model.fusion.unimodal_logits(features), labels), rel=1e-4)


def test_agm_refuses_one_modality():
    torch.manual_seed(0)
    model = build_model({"audio": ("mlp", {"d_in": 6, "hidden": 8, "layers": 1})}, "concat", C)
    with pytest.raises(ValueError, match="'agm' needs at least two modalities"):
        make("agm").setup(model, torch.optim.SGD(model.parameters(), lr=0.1))


# --- three modalities and end to end -----------------------------------------------------------

@pytest.mark.parametrize("name", ["mmpareto", "pmr", "agm"])
def test_three_modalities_train(name):
    model, method = three_modality_model(), make(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.setup(model, optimizer)
    method.on_epoch_start(model, 0)
    inputs, labels = vector_batch()
    first = None
    for _ in range(5):
        result = method.training_step(model, inputs, labels)
        assert torch.isfinite(result.loss)
        first = float(result.losses["fused"]) if first is None else first
        backward(method, model, result)
        optimizer.step()
    assert set(result.unimodal_logits) == {"audio", "visual", "text"}
    assert float(result.losses["fused"]) < first  # it learns
    keys = {"mmpareto": "pareto_weight_mm/", "pmr": "pmr_coeff/", "agm": "agm_coeff/"}[name]
    assert {k.split("/")[1] for k in result.stats if k.startswith(keys)} == {"audio", "visual", "text"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("new_methods")
    data = generate(base / "data", seed=0, n_train_per_class=8,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    return {"data_root": str(data), "cache_dir": str(base / "cache"), "image_size": 32, "frames": 2,
            "model_width": 4, "model_depth": 1, "batch_size": 16, "lr": 1e-3, "val_fraction": 0.25}


@pytest.mark.parametrize("name", ["mmpareto", "pmr", "agm"])
def test_trains_end_to_end_and_resumes_exactly(tiny, name):
    cfg = from_dict({**tiny, "method": name, "epochs": 2, "optimizer": "sgd", "momentum": 0.9})
    straight = Trainer(cfg, seed=0)
    history = straight.fit()
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    assert {"val_acc", "val_acc_audio", "val_acc_visual"} <= set(history[-1])
    prefix = {"mmpareto": "pareto_conflict/", "pmr": "pmr_active", "agm": "agm_coeff/"}[name]
    assert any(k.startswith(prefix) for k in history[-1])
    interrupted = Trainer(cfg, seed=0, data=straight.data)
    interrupted.step_epoch()
    state = interrupted.state_dict()  # before another Trainer reseeds the global generator
    again = Trainer(cfg, seed=0, data=straight.data)
    again.load_state_dict(state)
    assert again.step_epoch() == history[-1]  # the method's state (prototypes, running scores) is restored
