"""Methods: gradient isolation of targeted parameter optimization (equation 11),
the loss each variant computes, and the registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bmlr.config import from_dict
from bmlr.methods import METHODS
from bmlr.models import build_model
from bmlr.reshaping import reshape_labels

C = 5


def tiny_model(fusion: str):
    torch.manual_seed(0)
    encoders = {
        "audio": ("resnet_audio", {"in_channels": 1, "base_width": 4, "blocks": (1, 1, 1, 1)}),
        "visual": ("resnet_visual", {"base_width": 4, "blocks": (1, 1, 1, 1)}),
    }
    return build_model(encoders, fusion, C)


def batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    inputs = {"audio": torch.randn(n, 1, 24, 24, generator=g), "visual": torch.randn(n, 2, 3, 24, 24, generator=g)}
    labels = torch.arange(n) % C
    return inputs, labels


def grads(model, loss, params):
    out = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def step(method_name: str, fusion: str = "concat", beta: float = 0.0, alpha: float = 1.0):
    model = tiny_model(fusion)
    cfg = from_dict({"method": method_name, "fusion": fusion, "alpha": alpha, "beta": beta})
    method = METHODS.get(method_name)(cfg)
    inputs, labels = batch()
    return model, method.training_step(model, inputs, labels), inputs, labels


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
@pytest.mark.parametrize("method_name", ["bmlr", "only_tpo", "uni_distill", "vanilla_reshape", "uni_reshaping"])
def test_targeted_methods_isolate_gradients(method_name, fusion):
    model, result, _, _ = step(method_name, fusion)
    groups = model.parameter_groups()
    encoder_params = [p for u in ("audio", "visual") for p in groups[u]]
    head_params = groups["head"]
    unimodal_loss = result.losses["audio"] + result.losses["visual"]
    full_enc = grads(model, result.loss, encoder_params)
    full_head = grads(model, result.loss, head_params)
    # Encoders: gradients unchanged when L^0 is removed; L^0 alone gives them nothing.
    for a, b in zip(full_enc, grads(model, unimodal_loss, encoder_params)):
        torch.testing.assert_close(a, b)
    assert all(g.abs().sum() == 0 for g in grads(model, result.losses["fused"], encoder_params))
    # Decision layer: gradients unchanged when the L^u are removed; L^u give it nothing.
    for a, b in zip(full_head, grads(model, result.losses["fused"], head_params)):
        torch.testing.assert_close(a, b)
    assert all(g.abs().sum() == 0 for g in grads(model, unimodal_loss, head_params))
    # Each encoder learns from its own unimodal loss only.
    assert all(g.abs().sum() == 0 for g in grads(model, result.losses["visual"], groups["audio"]))
    assert sum(g.abs().sum() for g in full_enc) > 0 and sum(g.abs().sum() for g in full_head) > 0


@pytest.mark.parametrize("method_name", ["uniform_baseline", "only_reshape"])
def test_joint_methods_do_not_isolate(method_name):
    """The check above can fail: under joint optimization L^0 reaches the encoders."""
    model, result, _, _ = step(method_name)
    enc = model.parameter_groups()["audio"]
    assert sum(g.abs().sum() for g in grads(model, result.losses["fused"], enc)) > 0


def test_bmlr_loss_uses_reshaped_labels():
    model, result, inputs, labels = step("bmlr", beta=0.0, alpha=2.0)
    with torch.no_grad():
        _, unimodal = model(inputs)  # eval-independent: recompute in train mode for identical BN stats
    model.train()
    features = model.encode(inputs)
    unimodal = model.fusion.unimodal_logits(features)
    targets = reshape_labels(labels, unimodal, alpha=2.0, beta=0.0)
    for u in ("audio", "visual"):
        expected = -(targets[u] * F.log_softmax(unimodal[u], -1)).sum(-1).mean()
        torch.testing.assert_close(result.losses[u], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.losses["fused"], F.cross_entropy(model.fusion(features), labels),
                               rtol=1e-4, atol=1e-5)
    n_reshaped = sum(result.stats[f"reshaped/{u}"] for u in ("audio", "visual"))
    # with beta = 0, exactly one modality per sample is reshaped unless confidences tie
    assert n_reshaped == len(labels)


def test_only_tpo_uses_one_hot_and_reports_no_reshaping():
    _, result, _, labels = step("only_tpo")
    assert not any(k.startswith("reshaped/") for k in result.stats)
    assert set(result.losses) == {"fused", "audio", "visual"}


def test_baseline_trains_only_fused_loss_for_concat():
    model, result, _, _ = step("baseline")
    assert result.losses["probe"].item() == 0.0
    torch.testing.assert_close(result.loss, result.losses["fused"])
    assert set(result.unimodal_logits) == {"audio", "visual"}


def test_baseline_probes_do_not_touch_encoders_with_separate_heads():
    model, result, _, _ = step("baseline", fusion="film")
    enc = [p for u in ("audio", "visual") for p in model.encoders[u].parameters()]
    for a, b in zip(grads(model, result.loss, enc), grads(model, result.losses["fused"], enc)):
        torch.testing.assert_close(a, b)
    assert result.losses["probe"].item() > 0


def test_uni_distill_readings_are_options():
    """Default Uni-Distill: TPO, target half one-hot, half partner softmax; `joint` lets the
    multimodal loss reach the encoders and `label_weight` sets the one-hot share."""
    inputs, labels = batch()
    default = METHODS.get("uni_distill")(from_dict({"method": "uni_distill"}))
    assert default.targeted and default.rule_kwargs() == {"label_weight": 0.5}
    model = tiny_model("concat")
    cfg = from_dict({"method": "uni_distill", "method_args": {"joint": True, "label_weight": 0.5}})
    result = METHODS.get("uni_distill")(cfg).training_step(model, inputs, labels)
    enc = model.parameter_groups()["audio"]
    assert sum(g.abs().sum() for g in grads(model, result.losses["fused"], enc)) > 0  # joint: L^0 reaches encoders
    # the audio loss is the soft CE against (one-hot + softmax(visual logits)) / 2
    _, unimodal = model(inputs)
    target = 0.5 * torch.nn.functional.one_hot(labels, C) + 0.5 * unimodal["visual"].detach().softmax(-1)
    expected = -(target * unimodal["audio"].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(result.losses["audio"], expected)
    for bad, field in [({"label_weight": 2}, "label_weight"), ({"label_weight": True}, "label_weight"),
                       ({"joint": "yes"}, "joint")]:
        with pytest.raises(ValueError, match=field):
            METHODS.get("uni_distill")(from_dict({"method": "uni_distill", "method_args": bad}))


def test_registry_lists_paper_methods_and_rejects_unknown_args():
    for name in ["baseline", "uniform_baseline", "bmlr", "only_reshape", "only_tpo",
                 "uni_distill", "vanilla_reshape", "uni_reshaping"]:
        assert name in METHODS
    cfg = from_dict({"method": "bmlr", "method_args": {"bogus": 1}})
    with pytest.raises(ValueError, match="bogus"):
        METHODS.get("bmlr")(cfg)
