"""Comparison methods (OGM-GE, DGL, AUG, UDI): the core rule of each on hand-checkable numbers,
and a few optimizer steps by hand on a tiny model that check each method's specific effect."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bmlr.config import from_dict
from bmlr.engine import Trainer
from bmlr.methods import METHODS
from bmlr.methods.aug import boosting_loss, weak_modality
from bmlr.methods.base import hard_cross_entropy, soft_cross_entropy
from bmlr.methods.dgl import dgl_unimodal_logits
from bmlr.methods.ogm_ge import modulated_parameters, ogm_coefficient, ogm_coefficients
from bmlr.methods.udi import dynamic_weight, kl_consistency, plateaued
from bmlr.models import build_model
from bmlr.models.fusion import ConcatFusion, SumFusion
from method_helpers import C, L3, grads, tiny_model

def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(n, 1, 24, 24, generator=g), "visual": torch.randn(n, 2, 3, 24, 24, generator=g)}
    return inputs, torch.arange(n) % C


def make(name: str, fusion: str = "concat", epochs: int = 70, **method_args):
    cfg = from_dict({"method": name, "fusion": fusion, "epochs": epochs, "method_args": method_args})
    return METHODS.get(name)(cfg)


def train_steps(model, method, optimizer, inputs, labels, steps: int = 3, check=None):
    """The Trainer's inner loop by hand: step, backward, after_backward, optimizer step."""
    results = []
    for _ in range(steps):
        result = method.training_step(model, inputs, labels)
        assert torch.isfinite(result.loss)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        method.after_backward(model)
        if check is not None:
            check(result)
        optimizer.step()
        results.append(result)
    return results


def test_registry_and_argument_validation():
    for name in ("ogm_ge", "dgl", "aug", "udi"):
        assert name in METHODS
        with pytest.raises(ValueError, match="bogus"):
            make(name, bogus=1)
    with pytest.raises(ValueError, match="coeff_form"):
        make("ogm_ge", coeff_form="nope")
    with pytest.raises(ValueError, match="consistency"):
        make("udi", consistency="nope")


# --- OGM-GE -----------------------------------------------------------------------------

def test_ogm_coefficients_hand_values():
    labels = torch.tensor([0, 1])
    logits = {"audio": torch.tensor([[L3, 0.0], [0.0, L3]]),  # p_true 0.75, 0.75 -> s = 1.5
              "visual": torch.tensor([[0.0, 0.0], [L3, 0.0]])}  # p_true 0.5, 0.25 -> s = 0.75
    scores, ratios, coeffs = ogm_coefficients(logits, labels, alpha=0.1)
    assert scores == pytest.approx({"audio": 1.5, "visual": 0.75})
    assert ratios == pytest.approx({"audio": 2.0, "visual": 0.5})
    assert coeffs == pytest.approx({"audio": 0.8026247, "visual": 1.0}, abs=1e-6)  # 1 - tanh(0.2)
    _, _, shifted = ogm_coefficients(logits, labels, alpha=0.1, form="shifted")
    assert shifted == pytest.approx({"audio": 0.9003320, "visual": 1.0}, abs=1e-6)  # 1 - tanh(0.1)
    # three modalities: each compared with the mean of the others
    logits["text"] = torch.tensor([[L3, 0.0], [0.0, L3]])
    _, ratios, coeffs = ogm_coefficients(logits, labels, alpha=0.1)
    assert ratios == pytest.approx({"audio": 4 / 3, "visual": 0.5, "text": 4 / 3})
    assert coeffs == pytest.approx({"audio": 0.8674512, "visual": 1.0, "text": 0.8674512}, abs=1e-6)
    assert ogm_coefficient(1.0, 0.1) == 1.0 and ogm_coefficient(0.3, 5.0) == 1.0


def test_ogm_selects_encoder_conv_weights_by_module():
    model = tiny_model("film")
    sel = modulated_parameters(model, "conv")
    for u in ("audio", "visual"):
        convs = [m.weight for m in model.encoders[u].modules() if isinstance(m, nn.Conv2d)]
        assert [id(p) for p in sel[u]] == [id(p) for p in convs]
    every = modulated_parameters(model, "all")
    heads = {id(p) for p in model.fusion.unimodal_heads.parameters()}
    assert {id(p) for p in every["audio"]} == {id(p) for p in model.encoders["audio"].parameters()}
    assert not heads & {id(p) for u in every for p in every[u]}
    # an encoder without 4-D weights (Transformer) is modulated as a whole rather than not at all
    seq = build_model({"text": ("transformer", {"d_in": 8, "d_model": 16, "layers": 1, "heads": 2}),
                       "audio": ("resnet_audio", {"in_channels": 1, "base_width": 4, "blocks": (1, 1, 1, 1)})},
                      "concat", C)
    assert {id(p) for p in modulated_parameters(seq, "conv")["text"]} == {id(p) for p in seq.encoders["text"].parameters()}


def test_ogm_scales_dominant_encoder_grads_by_exactly_the_coefficient():
    model = tiny_model()
    method = make("ogm_ge", alpha_ogm=0.5, ge=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.setup(model, optimizer)
    method.on_epoch_start(model, 0)
    inputs, labels = batch()
    selected = modulated_parameters(model, "conv")
    selected_ids = {id(p) for ps in selected.values() for p in ps}
    seen_dominant = []

    for _ in range(3):
        result = method.training_step(model, inputs, labels)
        assert torch.isfinite(result.loss) and set(result.losses) == {"fused", "probe"}
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        before = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
        method.after_backward(model)
        coeffs = method.last_coefficients
        _, ratios, expected = ogm_coefficients(result.unimodal_logits, labels, 0.5)
        assert coeffs == pytest.approx(expected)
        dominant = max(ratios, key=ratios.get)
        assert coeffs[dominant] == pytest.approx(1 - math.tanh(0.5 * ratios[dominant])) and coeffs[dominant] < 1
        assert [k for u, k in coeffs.items() if u != dominant] == [1.0]
        seen_dominant.append(dominant)
        for u, params in selected.items():
            for p in params:
                torch.testing.assert_close(p.grad, before[id(p)] * coeffs[u], rtol=1e-6, atol=0)
        for p in model.parameters():  # BatchNorm, biases, the head: untouched
            if id(p) not in selected_ids and p.grad is not None:
                assert torch.equal(p.grad, before[id(p)])
        assert result.stats[f"ogm_modulated/{dominant}"] == len(labels)
        optimizer.step()
    assert seen_dominant  # the coefficient was applied on every step

    # outside the window (epochs counted from 0, ends inclusive) nothing changes
    method.on_epoch_start(model, 51)
    result = method.training_step(model, inputs, labels)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    method.after_backward(model)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, [p for p in model.parameters() if p.grad is not None]))
    assert method.last_coefficients is None and result.stats["ogm_modulated/audio"] == 0


def test_ogm_ge_noise_has_the_gradient_std():
    model = tiny_model()
    method = make("ogm_ge")  # alpha 0.1, GE on
    method.on_epoch_start(model, 0)
    inputs, labels = batch()
    torch.manual_seed(5)
    result = method.training_step(model, inputs, labels)
    result.loss.backward()
    before = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    method.after_backward(model)
    for u, params in modulated_parameters(model, "conv").items():
        p = max(params, key=lambda q: q.numel())  # thousands of entries: a tight std estimate
        noise = p.grad - before[id(p)] * method.last_coefficients[u]
        assert 0.9 < float(noise.std() / before[id(p)].std()) < 1.1  # noise also on the k = 1 modality


# --- DGL --------------------------------------------------------------------------------

def test_dgl_unimodal_logits_hand_values():
    fusion = ConcatFusion(["a", "v"], {"a": 2, "v": 2}, 2)
    with torch.no_grad():
        fusion.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]))
        fusion.fc.bias.copy_(torch.tensor([0.5, -0.5]))
    za = torch.tensor([[1.0, 2.0]], requires_grad=True)
    zv = torch.tensor([[3.0, 4.0]], requires_grad=True)
    full = dgl_unimodal_logits(fusion, {"a": za, "v": zv}, "full")  # fc([z^u; 0]) = W^u z^u + b
    torch.testing.assert_close(full["a"], torch.tensor([[1.5, 1.5]]))
    torch.testing.assert_close(full["v"], torch.tensor([[4.5, 2.5]]))
    split = dgl_unimodal_logits(fusion, {"a": za, "v": zv}, "split")  # W^u z^u + b / 2
    torch.testing.assert_close(split["a"], torch.tensor([[1.25, 1.75]]))
    torch.testing.assert_close(split["v"], torch.tensor([[4.25, 2.75]]))
    (full["a"].sum() + full["v"].sum()).backward()
    assert fusion.fc.weight.grad is None and fusion.fc.bias.grad is None  # the head gets nothing
    torch.testing.assert_close(za.grad, torch.tensor([[1.0, 1.0]]))

    summed = SumFusion(["a", "v"], {"a": 2, "v": 2}, 2)
    with torch.no_grad():
        summed.fc["a"].weight.copy_(torch.eye(2))
        summed.fc["v"].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        summed.bias.copy_(torch.tensor([0.5, -0.5]))
    out = dgl_unimodal_logits(summed, {"a": za.detach(), "v": zv.detach()}, "full")
    torch.testing.assert_close(out["v"], torch.tensor([[4.5, 2.5]]))


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_dgl_routes_gradients_and_weights_unimodal_losses(fusion):
    model = tiny_model(fusion)
    inputs, labels = batch()
    groups = model.parameter_groups()
    enc = [p for u in ("audio", "visual") for p in model.encoders[u].parameters()]
    head = groups["head"]
    r4 = make("dgl", fusion, alpha_dgl=4.0, grad_clip=0.0).training_step(model, inputs, labels)
    r1 = make("dgl", fusion, alpha_dgl=1.0, grad_clip=0.0).training_step(model, inputs, labels)
    unimodal = r4.losses["audio"] + r4.losses["visual"]
    assert all(g.abs().sum() == 0 for g in grads(r4.losses["fused"], enc))  # L^0 never reaches an encoder
    assert all(g.abs().sum() == 0 for g in grads(unimodal, head))  # L^u never reaches the fusion module
    assert sum(g.abs().sum() for g in grads(r4.losses["fused"], head)) > 0
    for a, b in zip(grads(r4.loss, enc), grads(r1.loss, enc)):  # encoder gradient = alpha * unimodal gradient
        torch.testing.assert_close(a, 4.0 * b, rtol=1e-4, atol=1e-7)
    for a, b in zip(grads(r4.loss, head), grads(r1.loss, head)):
        torch.testing.assert_close(a, b)


def test_dgl_with_only_tpo_settings_equals_only_tpo():
    model = tiny_model()
    inputs, labels = batch()
    dgl = make("dgl", alpha_dgl=1.0, unimodal_bias="split", grad_clip=0.0).training_step(model, inputs, labels)
    tpo = make("only_tpo").training_step(model, inputs, labels)
    for key in ("fused", "audio", "visual"):
        torch.testing.assert_close(dgl.losses[key], tpo.losses[key])
    full = make("dgl", alpha_dgl=1.0, grad_clip=0.0).training_step(model, inputs, labels)
    assert not torch.allclose(full.losses["audio"], tpo.losses["audio"])  # the full bias b is a real difference


def test_dgl_steps_clip_the_gradient_norm():
    model = tiny_model()
    method = make("dgl", grad_clip=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.setup(model, optimizer)
    inputs, labels = batch()
    start = [p.detach().clone() for p in model.parameters()]

    def check(_):
        norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        assert float(norm) <= 1e-3 * (1 + 1e-4)

    train_steps(model, method, optimizer, inputs, labels, check=check)
    assert any(not torch.equal(a, p) for a, p in zip(start, model.parameters()))
    fused, unimodal = method.predict(model, inputs)
    assert fused.shape == (6, C) and set(unimodal) == {"audio", "visual"}


# --- AUG --------------------------------------------------------------------------------

def test_aug_boosting_loss_hand_values():
    labels = torch.tensor([0])
    base = torch.tensor([[0.0, 0.0]])
    loss, ens = boosting_loss(base, [], labels, 0.5)
    assert float(loss) == pytest.approx(math.log(2))
    # one learner: CE(F) + CE(prev = base) + (1 - 0.5 * p_prev[y]) * CE(new)
    #            = -ln 0.75 + ln 2 + 0.75 * -ln 0.75
    new = torch.tensor([[L3, 0.0]])
    loss, ens = boosting_loss(base, [new], labels, 0.5)
    torch.testing.assert_close(ens, new)
    assert float(loss) == pytest.approx(1.1965908, abs=1e-6)
    # the public code's form: CE(new, y) - 0.5 * softCE(new, y * softmax(prev))
    public = hard_cross_entropy(new, labels) - 0.5 * soft_cross_entropy(new, torch.tensor([[0.5, 0.0]]))
    assert float(loss) == pytest.approx(float(hard_cross_entropy(new, labels) + math.log(2) + public), abs=1e-6)
    # two learners: F = [ln3, ln3] (CE ln 2); prev = [ln3, 0] (CE -ln .75, p_y .75); newest [0, ln3] (q_y .25)
    loss, _ = boosting_loss(base, [new, torch.tensor([[0.0, L3]])], labels, 0.5)
    assert float(loss) == pytest.approx(math.log(2) - math.log(0.75) + 0.625 * -math.log(0.25), abs=1e-6)
    assert float(loss) == pytest.approx(1.8472632, abs=1e-6)


def test_aug_assignment_rule_and_schedule():
    assert weak_modality({"audio": 10.0, "visual": 5.0}) == "visual"
    assert weak_modality({"audio": 5.0, "visual": 10.0}) == "audio"
    assert weak_modality({"audio": 10.0, "visual": 10.05}) is None  # ratio 0.995: inside 1 +- 0.01
    assert weak_modality({"audio": 10.2, "visual": 10.0}) == "visual"  # ratio 1.02
    assert weak_modality({"audio": 10.0, "visual": 5.0}, target_ratio=2.0) is None
    assert weak_modality({"a": 10.0, "v": 10.0, "t": 5.0}) == "t"
    assert weak_modality({"a": 10.0, "v": 10.0, "t": 9.95}) is None
    method = make("aug", epochs=70)  # the original: check = epochs // 10, and after epoch 0
    assert method.check_every == 7
    assert [e for e in range(20) if method.is_check_epoch(e)] == [0, 6, 13]
    assert make("aug", epochs=5).check_every == 1 and make("aug", check_every=3).check_every == 3


def aug_setup(seed: int = 0, **args):
    model = tiny_model(seed=seed)
    method = make("aug", epochs=10, band=0.0, **args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    method.setup(model, optimizer)
    return model, method, optimizer


def test_aug_adds_learner_to_weaker_modality_and_optimizer():
    model, method, optimizer = aug_setup()
    inputs, labels = batch()
    method.on_epoch_start(model, 0)
    train_steps(model, method, optimizer, inputs, labels)
    weak = weak_modality(method.scores, 1.0, 0.0)
    assert weak is not None and len(optimizer.param_groups) == 1
    method.on_epoch_start(model, 1)  # epoch 0 was a check epoch
    learners = model.fusion.aug_learners
    assert learners.counts() == {u: int(u == weak) for u in ("audio", "visual")}
    new = list(learners.learners[weak][0].parameters())
    assert len(optimizer.param_groups) == 2
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == [id(p) for p in new]
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"]
    model.parameter_groups()  # still a partition (the learners sit in the fusion module)
    start = [p.detach().clone() for p in new]
    results = train_steps(model, method, optimizer, inputs, labels)
    assert all(not torch.equal(a, p) for a, p in zip(start, new))  # the learner trains
    assert all(p.grad is None for p in learners.learners[weak][1].parameters())  # idle slots do not
    assert set(results[-1].losses) == {"audio", "visual"}
    model.eval()
    with torch.no_grad():
        fused, ensembles = method.predict(model, inputs)
        base = model.fusion.unimodal_logits(model.encode(inputs))
        h = learners.learners[weak][0](model.encode(inputs)[weak])
    torch.testing.assert_close(ensembles[weak], base[weak] + h)
    torch.testing.assert_close(fused, ensembles["audio"] + ensembles["visual"])


def bare_trainer(seed: int):
    """A Trainer around a hand-built model, so checkpoints go through the real Trainer code."""
    model, method, optimizer = aug_setup(seed)
    t = Trainer.__new__(Trainer)
    t.cfg, t.seed, t.model, t.method, t.optimizer, t.scheduler = method.cfg, seed, model, method, optimizer, None
    t.scaler = torch.amp.GradScaler("cuda", enabled=False)
    t.epoch, t.best_epoch, t.best_val, t.best_model_state, t.history = 0, -1, {}, None, []
    return t


def predict_eval(t, inputs):
    t.model.eval()
    with torch.no_grad():
        out = t.method.predict(t.model, inputs)
    t.model.train()
    return out


def test_aug_learners_survive_checkpoint_resume_and_best_restore():
    inputs, labels = batch()
    a = bare_trainer(0)
    a.method.on_epoch_start(a.model, 0)
    train_steps(a.model, a.method, a.optimizer, inputs, labels, steps=2)
    a.method.on_epoch_start(a.model, 1)  # first learner
    train_steps(a.model, a.method, a.optimizer, inputs, labels, steps=2)
    a.best_model_state = copy.deepcopy({k: v.detach().cpu() for k, v in a.model.state_dict().items()})
    best_counts = a.model.fusion.aug_learners.counts()
    best_fused, _ = predict_eval(a, inputs)
    a.method.on_epoch_start(a.model, 2)  # second learner
    train_steps(a.model, a.method, a.optimizer, inputs, labels, steps=2)
    assert sum(a.model.fusion.aug_learners.counts().values()) == 2 and len(a.optimizer.param_groups) == 3

    b = bare_trainer(123)  # a fresh run with other initial weights resumes from a's checkpoint
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.model.fusion.aug_learners.counts() == a.model.fusion.aug_learners.counts()
    assert b.method.joined == a.method.joined and len(b.optimizer.param_groups) == 3
    for ga, gb in zip(a.optimizer.param_groups, b.optimizer.param_groups):
        assert [tuple(p.shape) for p in ga["params"]] == [tuple(p.shape) for p in gb["params"]]
    torch.testing.assert_close(predict_eval(b, inputs)[0], predict_eval(a, inputs)[0])
    train_steps(a.model, a.method, a.optimizer, inputs, labels, steps=1)
    train_steps(b.model, b.method, b.optimizer, inputs, labels, steps=1)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):  # optimizer state came back too
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)

    a.load_best()  # the best epoch had one learner: the restored model predicts with one
    assert a.model.fusion.aug_learners.counts() == best_counts
    torch.testing.assert_close(predict_eval(a, inputs)[0], best_fused)


# --- UDI --------------------------------------------------------------------------------

def test_udi_guidance_hand_values():
    labels = torch.tensor([0])
    anchor = torch.tensor([[L3, 0.0]])  # p = [0.75, 0.25]
    guided = torch.tensor([[0.0, 0.0]])  # p = [0.5, 0.5]
    assert dynamic_weight(anchor, guided, labels, 1.0) == pytest.approx(1 - 0.5 / 0.75)
    assert dynamic_weight(anchor, guided, labels, 3.0) == pytest.approx(1.0)
    assert dynamic_weight(anchor, torch.tensor([[2 * L3, 0.0]]), labels, 1.0) == 0.0  # guided ahead: no guidance
    # KL(p_anchor || p_guided) = 0.75 ln 1.5 + 0.25 ln 0.5
    assert float(kl_consistency(anchor, guided)) == pytest.approx(0.1308120, abs=1e-6)
    # T = 2: p_anchor = softmax([ln 3, 0] / 2) = [0.634, 0.366]; times T^2
    assert float(kl_consistency(anchor, guided, 2.0)) == pytest.approx(0.1453631, abs=1e-6)
    g = guided.clone().requires_grad_(True)
    kl_consistency(anchor, g).backward()
    torch.testing.assert_close(g.grad, torch.tensor([[-0.25, 0.25]]))  # q - p: pulls toward the anchor


def test_udi_plateau_rule():
    assert plateaued([1.0, 0.5, 0.499, 0.498], patience=2, min_delta=0.01)
    assert not plateaued([1.0, 0.5, 0.49], patience=2, min_delta=0.01)
    assert not plateaued([1.0, 0.5, 0.499, 0.40], patience=2, min_delta=0.01)
    assert not plateaued([1.0, 1.0, 1.0], patience=0, min_delta=0.01)


def test_udi_phase_one_trains_only_the_anchor_then_guides():
    model = tiny_model()
    method = make("udi", anchor_epochs=1, plateau_patience=0, anchor_by="order")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    method.setup(model, optimizer)
    inputs, labels = batch()
    visual_bn = [b.clone() for b in model.encoders["visual"].buffers()]
    model.train()
    method.on_epoch_start(model, 0)
    assert method.phase == 1

    def phase_one(result):
        assert set(result.losses) == {"audio"}
        assert all(p.grad is None for p in model.encoders["visual"].parameters())
        assert all(p.grad is not None for p in model.encoders["audio"].parameters())
        assert model.fusion.fc.weight.grad[:, 32:].abs().sum() == 0  # only the anchor's block W^a learns
        assert model.fusion.fc.weight.grad[:, :32].abs().sum() > 0

    train_steps(model, method, optimizer, inputs, labels, check=phase_one)
    assert all(torch.equal(a, b) for a, b in zip(visual_bn, model.encoders["visual"].buffers()))

    resumed = make("udi", anchor_epochs=1, plateau_patience=0, anchor_by="order")  # a checkpoint taken mid-phase-1
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    method.on_epoch_start(model, 1)
    resumed.on_epoch_start(model, 1)
    assert method.phase == resumed.phase == 2 and method.switch_epoch == 1
    assert method.history == resumed.history and len(method.history) == 1
    assert not model.encoders["audio"].training and model.encoders["visual"].training  # frozen anchor

    anchor_before = [p.detach().clone() for p in model.encoders["audio"].parameters()]

    def phase_two(result):
        assert set(result.losses) == {"fused", "visual"}
        assert all(p.grad is None for p in model.encoders["audio"].parameters())
        assert all(p.grad is not None for p in model.encoders["visual"].parameters())
        assert 0.0 <= result.stats["udi_lambda/visual"] <= len(labels)

    train_steps(model, method, optimizer, inputs, labels, check=phase_two)
    assert all(torch.equal(a, p) for a, p in zip(anchor_before, model.encoders["audio"].parameters()))
    result = method.training_step(model, inputs, labels)
    enc_v = list(model.encoders["visual"].parameters())
    assert all(g.abs().sum() == 0 for g in grads(result.losses["fused"], enc_v))  # no joint loss
    assert all(g.abs().sum() == 0 for g in grads(result.losses["visual"], model.parameter_groups()["head"]))

    again = make("udi", anchor_epochs=1, plateau_patience=0)
    again.load_state_dict(method.state_dict())
    again.on_epoch_start(model, 2)
    assert again.phase == 2 and again.switch_epoch == 1


def test_udi_plateau_switch_and_cosine_guidance():
    model = tiny_model()
    method = make("udi", anchor_epochs=100, plateau_patience=1, plateau_min_delta=0.9, consistency="cosine",
                  anchor="visual")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, labels = batch()
    for epoch in range(2):
        method.on_epoch_start(model, epoch)
        assert method.phase == 1
        train_steps(model, method, optimizer, inputs, labels, steps=1)
    method.on_epoch_start(model, 2)  # the loss did not fall by 90%: plateau
    assert method.phase == 2 and method.switch_epoch == 2
    result = train_steps(model, method, optimizer, inputs, labels, steps=1)[0]
    assert set(result.losses) == {"fused", "audio"}
