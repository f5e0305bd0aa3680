"""The readings the papers leave open (issue 17): Vanilla-Reshape's and Uni-Reshaping's literal
readings, the three-modality pairings, UDI's anchor choice and frozen target, and AUG's
learner training. Each reading is checked on hand-computed numbers (4 decimals) or on a
constructed case whose outcome is known in advance."""
from __future__ import annotations

import copy

import pytest
import torch

from bmlr.config import from_dict
from bmlr.methods import METHODS
from bmlr.methods.base import soft_cross_entropy
from bmlr.models import build_model
from bmlr.reshaping import Readings, RunningConfidence, compute_reshaping
from method_helpers import grads

ATOL = 1e-4  # the hand values below are written to 4 decimals


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def make(name: str, epochs: int = 10, **method_args):
    cfg = from_dict({"method": name, "fusion": "concat", "epochs": epochs, "method_args": method_args})
    return METHODS.get(name)(cfg)


def mlp_model(dims: dict[str, int], num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({u: ("mlp", {"d_in": d, "hidden": 8, "layers": 1, "dropout": 0.0}) for u, d in dims.items()},
                       "concat", num_classes)


# ----------------------------------------------------------------------------------------------
# Two modalities, C = 3, alpha = 1, beta = 0.3; logits are log-probabilities (softmax = p).
# sample 0, y = 0: p^a = (.8, .1, .1), p^v = (.4, .3, .3): lambda^a = 2, xi^a = 1/2, xi^v = 0
#   d^a = softmax(2 log p^v) = (.16, .09, .09)/.34 = (.4706, .2647, .2647)
#   d^v = softmax(1/2 log p^a) = sqrt(.8, .1, .1)/sum = (.5858, .2071, .2071)
# sample 1, y = 1: p^a = (.5, .3, .2), p^v = (.1, .6, .3): lambda^v = 2, xi^v = 1/2, xi^a = 0
#   d^v = softmax(2 log p^a) = (.25, .09, .04)/.38 = (.6579, .2368, .1053)
#   d^a = softmax(1/2 log p^v) = sqrt(.1, .6, .3)/sum = (.1930, .4727, .3343)
# ----------------------------------------------------------------------------------------------
Y2 = torch.tensor([0, 1])


def two_logits():
    return {"audio": t([[.8, .1, .1], [.5, .3, .2]]).log(), "visual": t([[.4, .3, .3], [.1, .6, .3]]).log()}


@pytest.mark.parametrize("target, audio, visual", [
    # today: d where xi > 0, else the one-hot label
    ("d_else_label", [[.4706, .2647, .2647], [0, 1, 0]], [[1, 0, 0], [.6579, .2368, .1053]]),
    # literal: xi d; xi = 0 gives the zero target
    ("xi_d", [[.2353, .1324, .1324], [0, 0, 0]], [[0, 0, 0], [.3289, .1184, .0526]]),
    # d everywhere, xi = 0 included
    ("d", [[.4706, .2647, .2647], [.1930, .4727, .3343]], [[.5858, .2071, .2071], [.6579, .2368, .1053]]),
])
def test_vanilla_readings_hand_values(target, audio, visual):
    r = compute_reshaping(Y2, two_logits(), 1.0, 0.3, rule="vanilla", readings=Readings(vanilla_target=target))
    torch.testing.assert_close(r.labels["audio"], t(audio), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t(visual), atol=ATOL, rtol=0)
    assert r.reshaped_count == {"audio": 1, "visual": 1}


def test_vanilla_literal_reading_gives_no_loss_where_xi_is_zero():
    r = compute_reshaping(Y2, two_logits(), 1.0, 0.3, rule="vanilla", readings=Readings(vanilla_target="xi_d"))
    z = torch.randn(2, 3)
    assert float(soft_cross_entropy(z[1:], r.labels["audio"][1:].float())) == 0.0  # xi^a = 0 on sample 1
    # a reshaped sample weighs xi: 1/2 of its cross-entropy against d
    d = t([[.16, .09, .09]]) / .34
    expected = 0.5 * float(soft_cross_entropy(z[:1], d.float()))
    assert float(soft_cross_entropy(z[:1], r.labels["audio"][:1].float())) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("share, gate, audio, visual", [
    # today: xi/C on every class, xi of equation 7
    ("all_classes", "beta", [[.6667, .1667, .1667], [0, 1, 0]], [[1, 0, 0], [.1667, .6667, .1667]]),
    # the paper's words: xi/(C-1) on each non-target class, 1 - xi on the target
    ("non_target", "beta", [[.5, .25, .25], [0, 1, 0]], [[1, 0, 0], [.25, .5, .25]]),
    # no beta gate: constant smoothing 0.1 for every sample of every modality
    ("all_classes", "none", [[.9333, .0333, .0333], [.0333, .9333, .0333]],
     [[.9333, .0333, .0333], [.0333, .9333, .0333]]),
    ("non_target", "none", [[.9, .05, .05], [.05, .9, .05]], [[.9, .05, .05], [.05, .9, .05]]),
])
def test_uniform_readings_hand_values(share, gate, audio, visual):
    r = compute_reshaping(Y2, two_logits(), 1.0, 0.3, rule="uniform",
                          readings=Readings(uniform_share=share, uniform_gate=gate, smoothing=0.1))
    torch.testing.assert_close(r.labels["audio"], t(audio), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["visual"], t(visual), atol=ATOL, rtol=0)
    expected_xi = [.5, 0] if gate == "beta" else [.1, .1]
    torch.testing.assert_close(r.intensity["audio"], t(expected_xi), atol=ATOL, rtol=0)


def test_readings_refuse_unknown_values():
    with pytest.raises(ValueError, match="vanilla_target"):
        Readings(vanilla_target="nope")
    with pytest.raises(ValueError, match="smoothing"):
        Readings(smoothing=1.5)
    with pytest.raises(ValueError, match="method_args.target"):
        make("vanilla_reshape", target="literal")
    with pytest.raises(ValueError, match="method_args.gate"):
        make("uni_reshaping", gate="lfm")
    with pytest.raises(ValueError, match="method_args.pairing"):
        make("bmlr", pairing="random")


def step_losses(method, model, inputs, labels):
    result = method.training_step(model, inputs, labels)
    with torch.no_grad():
        unimodal = model.fusion.unimodal_logits(model.encode(inputs))
    return result, unimodal


@pytest.mark.parametrize("name, args, readings", [
    ("vanilla_reshape", {}, Readings()),
    ("vanilla_reshape", {"target": "xi_d"}, Readings(vanilla_target="xi_d")),
    ("vanilla_reshape", {"target": "d"}, Readings(vanilla_target="d")),
    ("uni_reshaping", {"target_share": "non_target"}, Readings(uniform_share="non_target")),
    ("uni_reshaping", {"gate": "none", "smoothing": 0.2}, Readings(uniform_gate="none", smoothing=0.2)),
])
def test_method_args_reach_the_rule(name, args, readings):
    model = mlp_model({"audio": 4, "visual": 5}, 3)
    g = torch.Generator().manual_seed(3)
    inputs = {"audio": torch.randn(6, 4, generator=g), "visual": torch.randn(6, 5, generator=g)}
    labels = torch.arange(6) % 3
    method = make(name, **args)
    result, unimodal = step_losses(method, model, inputs, labels)
    rule = "vanilla" if name == "vanilla_reshape" else "uniform"
    expected = compute_reshaping(labels, unimodal, method.cfg.alpha, method.cfg.beta, rule=rule, readings=readings)
    for u in ("audio", "visual"):
        want = soft_cross_entropy(unimodal[u], expected.labels[u])
        assert float(result.losses[u].detach()) == pytest.approx(float(want), abs=1e-6)


def test_uni_reshaping_tpo_switch():
    model = mlp_model({"audio": 4, "visual": 5}, 3)
    inputs = {"audio": torch.randn(6, 4), "visual": torch.randn(6, 5)}
    labels = torch.arange(6) % 3
    head = model.parameter_groups()["head"]
    enc_a = list(model.encoders["audio"].parameters())
    tpo = make("uni_reshaping").training_step(model, inputs, labels)
    joint = make("uni_reshaping", tpo=False).training_step(model, inputs, labels)
    assert all(g.abs().sum() == 0 for g in grads(tpo.losses["audio"], head))  # L^u: encoder only
    assert all(g.abs().sum() == 0 for g in grads(tpo.losses["fused"], enc_a))  # L^0: head only
    assert any(g.abs().sum() > 0 for g in grads(joint.losses["audio"], head))
    assert any(g.abs().sum() > 0 for g in grads(joint.losses["fused"], enc_a))


# ----------------------------------------------------------------------------------------------
# Three modalities a, v, t (that order), C = 2, y = 0 for both samples, alpha = 1, beta = 0.
#   sample 0: p_y a .8, v .5, t .2   (per sample: a strongest, v intermediate, t weakest)
#   sample 1: p_y a .2, v .6, t .4   (per sample: v strongest, t intermediate, a weakest)
#   batch mean: a .5, v .55, t .3    (data set: v, a, t)
# The reshaped target of u against partner w is xi d + (1 - xi) e0 with lambda = p^u_y / p^w_y,
# xi = 1 - 1/lambda (lambda > 1), d = softmax(lambda log p^w) = p^w ** lambda / sum.
# ----------------------------------------------------------------------------------------------
Y3 = torch.tensor([0, 0])


def three_logits():
    return {"a": t([[.8, .2], [.2, .8]]).log(), "v": t([[.5, .5], [.6, .4]]).log(),
            "t": t([[.2, .8], [.4, .6]]).log()}


def test_pairing_per_sample_hand_values():
    # s0: a vs v, lambda 1.6, xi .375, d = (.5, .5) -> (.8125, .1875); t vs v: lambda .4, no.
    # s1: v vs t, lambda 1.5, xi 1/3, d = (.4^1.5, .6^1.5)/sum = (.3525, .6475) -> (.7842, .2158).
    r = compute_reshaping(Y3, three_logits(), 1.0, 0.0, pairing="per_sample")
    assert {u: p.tolist() for u, p in r.partner.items()} == {"a": [1, 2], "v": [1, 2], "t": [1, 2]}
    torch.testing.assert_close(r.labels["a"], t([[.8125, .1875], [1, 0]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["v"], t([[1, 0], [.7842, .2158]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["t"], t([[1, 0], [1, 0]]), atol=0, rtol=0)
    assert r.reshaped_count == {"a": 1, "v": 1, "t": 0}  # each sample's strongest only


def test_pairing_dataset_order_hand_values():
    # batch order v, a, t: a is the intermediate for every sample and never reshaped.
    # s1: v vs a: lambda 3, xi 2/3, d = (.2^3, .8^3)/sum = (.0154, .9846) -> (.3436, .6564) (wrong top)
    #     t vs a: lambda 2, xi 1/2, d = (.04, .64)/.68 = (.0588, .9412) -> (.5294, .4706):
    #     the data-set-weakest modality is reshaped where it beats the intermediate one.
    r = compute_reshaping(Y3, three_logits(), 1.0, 0.0, pairing="dataset_order")
    assert {u: p.tolist() for u, p in r.partner.items()} == {"a": [0, 0], "v": [0, 0], "t": [0, 0]}
    torch.testing.assert_close(r.labels["a"], t([[1, 0], [1, 0]]), atol=0, rtol=0)
    torch.testing.assert_close(r.labels["v"], t([[1, 0], [.3436, .6564]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["t"], t([[1, 0], [.5294, .4706]]), atol=ATOL, rtol=0)
    assert r.reshaped_count == {"a": 0, "v": 1, "t": 1} and r.wrong_top_count["v"] == 1
    # an explicit data-set order a, t, v: t is the intermediate.
    # s0: a vs t: lambda 4, xi .75, d = (.2^4, .8^4)/sum = (.0039, .9961) -> (.2529, .7471)
    #     v vs t: lambda 2.5, xi .6, d = (.2^2.5, .8^2.5)/sum = (.0303, .9697) -> (.4182, .5818)
    # s1: v vs t as per sample -> (.7842, .2158); a vs t: lambda .5, no.
    r = compute_reshaping(Y3, three_logits(), 1.0, 0.0, pairing="dataset_order", order=["a", "t", "v"])
    assert {u: p.tolist() for u, p in r.partner.items()} == {"a": [2, 2], "v": [2, 2], "t": [2, 2]}
    torch.testing.assert_close(r.labels["a"], t([[.2529, .7471], [1, 0]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["v"], t([[.4182, .5818], [.7842, .2158]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["t"], t([[1, 0], [1, 0]]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="order"):
        compute_reshaping(Y3, three_logits(), 1.0, 0.0, pairing="dataset_order", order=["a", "v"])


def test_pairing_strongest_weakest_hand_values():
    # s0: a (strongest) vs t (weakest): lambda 4 -> (.2529, .7471); v keeps y.
    # s1: v (strongest) vs a (weakest): lambda 3 -> (.3436, .6564); t keeps y.
    r = compute_reshaping(Y3, three_logits(), 1.0, 0.0, pairing="strongest_weakest")
    assert {u: p.tolist() for u, p in r.partner.items()} == {"a": [2, 1], "v": [1, 0], "t": [0, 2]}
    torch.testing.assert_close(r.labels["a"], t([[.2529, .7471], [1, 0]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["v"], t([[1, 0], [.3436, .6564]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(r.labels["t"], t([[1, 0], [1, 0]]), atol=0, rtol=0)
    torch.testing.assert_close(r.intensity["a"], t([.75, 0]), atol=ATOL, rtol=0)


def test_pairing_is_moot_for_two_modalities():
    base = compute_reshaping(Y2, two_logits(), 1.0, 0.3)
    for pairing in ("dataset_order", "strongest_weakest"):
        r = compute_reshaping(Y2, two_logits(), 1.0, 0.3, pairing=pairing)
        for u in ("audio", "visual"):
            torch.testing.assert_close(r.labels[u], base.labels[u], atol=0, rtol=0)


def test_running_confidence_hand_values_and_state():
    conf = RunningConfidence()
    assert conf.order() is None
    conf.update(Y3, {u: z.float() for u, z in three_logits().items()})
    assert conf.current() == pytest.approx({"a": .5, "v": .55, "t": .3}, abs=1e-6)  # the epoch so far
    conf.end_epoch()
    conf.update(torch.tensor([1]), {"a": t([[.9, .1]]).log(), "v": t([[.5, .5]]).log(), "t": t([[.1, .9]]).log()})
    assert conf.order() == ["v", "a", "t"]  # the last completed epoch still decides
    again = RunningConfidence()
    again.load_state_dict(copy.deepcopy(conf.state_dict()))
    again.end_epoch()
    assert again.current() == pytest.approx({"a": .1, "v": .5, "t": .9}, abs=1e-6)
    assert again.order() == ["t", "v", "a"]


def test_bmlr_dataset_order_uses_the_running_confidence():
    model = mlp_model({"a": 3, "v": 4, "t": 5}, 2)
    g = torch.Generator().manual_seed(5)
    inputs = {u: torch.randn(8, d, generator=g) for u, d in (("a", 3), ("v", 4), ("t", 5))}
    labels = torch.arange(8) % 2
    method = make("bmlr", pairing="dataset_order")
    method.cfg.beta = 0.0
    method.on_epoch_start(model, 0)
    result, unimodal = step_losses(method, model, inputs, labels)
    with torch.no_grad():
        p_y = {u: float(z.softmax(-1).gather(1, labels[:, None]).mean()) for u, z in unimodal.items()}
    assert method.confidence.current() == pytest.approx(p_y, abs=1e-6)
    order = sorted(p_y, key=lambda u: -p_y[u])
    expected = compute_reshaping(labels, unimodal, method.cfg.alpha, 0.0, pairing="dataset_order", order=order)
    for u in ("a", "v", "t"):
        assert float(result.losses[u].detach()) == pytest.approx(float(soft_cross_entropy(unimodal[u], expected.labels[u])),
                                                        abs=1e-6)
    resumed = make("bmlr", pairing="dataset_order")
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    assert resumed.confidence.current() == pytest.approx(p_y, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# UDI: the anchor by confidence, the frozen anchor target.
# Constructed case: the audio input is all zeros (its encoder sees one point, so its prediction
# is one fixed distribution and its mean true-class probability over balanced labels is
# exactly 1/C), the visual input is 3 * one-hot(label). Audio is first in order.
# ----------------------------------------------------------------------------------------------
C3 = 3


def udi_case(**args):
    model = mlp_model({"audio": 4, "visual": C3}, C3)
    labels = torch.arange(6) % C3
    inputs = {"audio": torch.zeros(6, 4), "visual": 3.0 * torch.nn.functional.one_hot(labels, C3).float()}
    method = make("udi", anchor_epochs=1, plateau_patience=0, **args)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    method.setup(model, optimizer)
    model.train()
    method.on_epoch_start(model, 0)
    for _ in range(10):
        result = method.training_step(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
    return model, method, optimizer, inputs, labels, result


def test_udi_anchor_is_the_more_confident_modality():
    model, method, _, _, _, last = udi_case(anchor_by="confidence")
    assert set(last.losses) == {"audio", "visual"}  # phase 1 trains every modality on its own CE
    conf = method.confidence.current()
    assert conf["audio"] == pytest.approx(1 / C3, abs=1e-5)
    assert conf["visual"] > 0.5
    method.on_epoch_start(model, 1)
    assert method.phase == 2 and method.anchor == "visual"
    assert not model.encoders["visual"].training and model.encoders["audio"].training
    resumed = make("udi", anchor_epochs=1, plateau_patience=0, anchor_by="confidence")
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    assert resumed.anchor == "visual" and resumed.phase == 2
    # the old rule picks the first modality, whatever its confidence
    model, method, *_ = udi_case(anchor_by="order")
    method.on_epoch_start(model, 1)
    assert method.anchor == "audio"


def phase_two_steps(model, method, optimizer, inputs, labels, steps=5):
    for _ in range(steps):
        result = method.training_step(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()


def test_udi_frozen_anchor_target_does_not_drift():
    model, method, optimizer, inputs, labels, _ = udi_case(anchor_by="confidence")
    method.on_epoch_start(model, 1)
    anchor = method.anchor
    with torch.no_grad():
        features = model.encode(inputs)
    target_before = method.anchor_logits(model, features)
    live_before = model.fusion.unimodal_logits(features)[anchor].detach().clone()
    torch.testing.assert_close(target_before, live_before)  # the copy is taken at the switch
    saved = copy.deepcopy(method.state_dict())
    phase_two_steps(model, method, optimizer, inputs, labels)
    live_after = model.fusion.unimodal_logits(features)[anchor].detach()
    assert not torch.allclose(live_after, live_before)  # L^0 keeps training W^anchor: the live head drifts
    torch.testing.assert_close(method.anchor_logits(model, features), target_before, atol=0, rtol=0)
    resumed = make("udi", anchor_epochs=1, plateau_patience=0, anchor_by="confidence")
    resumed.load_state_dict(saved)  # a checkpoint taken at the switch brings back the same target
    torch.testing.assert_close(resumed.anchor_logits(model, features), target_before, atol=0, rtol=0)


def test_udi_live_anchor_target_follows_the_head():
    model, method, optimizer, inputs, labels, _ = udi_case(anchor_by="confidence", anchor_target="live")
    method.on_epoch_start(model, 1)
    with torch.no_grad():
        features = model.encode(inputs)
    before = method.anchor_logits(model, features)
    phase_two_steps(model, method, optimizer, inputs, labels)
    after = method.anchor_logits(model, features)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, model.fusion.unimodal_logits(features)[method.anchor].detach())


# ----------------------------------------------------------------------------------------------
# AUG: the public code's untrained learners, against our default.
# ----------------------------------------------------------------------------------------------
def aug_case(**args):
    model = mlp_model({"audio": 4, "visual": 5}, 3)
    g = torch.Generator().manual_seed(7)
    inputs = {"audio": torch.randn(6, 4, generator=g), "visual": torch.randn(6, 5, generator=g)}
    labels = torch.arange(6) % 3
    method = make("aug", band=0.0, **args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    method.setup(model, optimizer)
    method.on_epoch_start(model, 0)
    method.add_learner("visual")
    learner = model.fusion.aug_learners.learners["visual"][0]
    return model, method, optimizer, inputs, labels, learner


def train_aug(model, method, optimizer, inputs, labels, steps=3):
    for _ in range(steps):
        result = method.training_step(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
    return result


@pytest.mark.parametrize("train_hidden", [True, False])
def test_aug_learner_training_flag(train_hidden):
    model, method, optimizer, inputs, labels, learner = aug_case(train_learner_hidden=train_hidden)
    hidden, output = learner[0], learner[2]
    joined = [id(p) for p in optimizer.param_groups[-1]["params"]]
    expected = list(hidden.parameters()) * train_hidden + list(output.parameters())
    assert joined == [id(p) for p in expected]
    hidden_before = [p.detach().clone() for p in hidden.parameters()]
    output_before = [p.detach().clone() for p in output.parameters()]
    # the learner's output reaches the encoder in both readings (through a frozen layer in the public code's)
    through_learner = learner(model.encode(inputs)["visual"]).square().sum()
    assert any(g.abs().sum() > 0 for g in grads(through_learner, list(model.encoders["visual"].parameters())))
    train_aug(model, method, optimizer, inputs, labels)
    assert all(not torch.equal(a, p) for a, p in zip(output_before, output.parameters()))  # always trains
    hidden_moved = [not torch.equal(a, p) for a, p in zip(hidden_before, hidden.parameters())]
    assert all(hidden_moved) if train_hidden else not any(hidden_moved)
    if not train_hidden:  # the public code: the hidden layer keeps its init and gets no gradient
        assert all(p.grad is None for p in hidden.parameters())
