"""Transformer fusion (MOSI/MOSEI): shapes, parameter ownership, and targeted parameter
optimization's gradient isolation (equation 11) on three sequence modalities, as for film."""
from __future__ import annotations

import pytest
import torch

from bmlr.config import from_dict
from bmlr.methods import METHODS
from bmlr.models import FUSIONS, build_model

C = 4
DIMS = {"text": 16, "audio": 8, "vision": 12}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _features(mods, batch=5, grad=True):
    return {u: torch.randn(batch, DIMS[u], requires_grad=grad) for u in mods}


def _grads(loss, params):
    out = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def _nonzero(grads) -> bool:
    return sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("mods", [["text", "audio"], ["text", "audio", "vision"]])
def test_shapes_and_one_token_per_modality(mods):
    fusion = FUSIONS.get("transformer")(mods, DIMS, C)
    feats = _features(mods)
    assert fusion.d_model == max(DIMS[u] for u in mods)
    assert fusion.token_sequence(feats).shape == (5, 1 + len(mods), fusion.d_model)
    assert fusion.fused_features(feats).shape == (5, fusion.d_model)
    assert fusion(feats).shape == (5, C)
    uni = fusion.unimodal_logits(feats)
    assert list(uni) == mods and all(z.shape == (5, C) for z in uni.values())
    with pytest.raises(ValueError):  # a sequence is not a feature vector: the fusion interface is [B, d_u]
        fusion({**feats, "text": torch.randn(5, 3, DIMS["text"])})


def test_fused_logits_are_the_decision_layer_of_the_cls_output():
    fusion = FUSIONS.get("transformer")(["text", "audio"], DIMS, C).eval()
    feats = _features(["text", "audio"], grad=False)
    torch.testing.assert_close(fusion(feats), fusion.fc_out(fusion.fused_features(feats)))
    # every modality reaches the fused logits (attention mixes them): changing audio changes them
    changed = {**feats, "audio": feats["audio"] + 1.0}
    assert not torch.allclose(fusion(feats), fusion(changed))


def test_heads_are_branches_and_the_rest_is_theta():
    mods = ["text", "audio", "vision"]
    fusion = FUSIONS.get("transformer")(mods, DIMS, C)
    decision = {id(p) for p in fusion.decision_parameters()}
    branches = {u: {id(p) for p in fusion.branch_parameters(u)} for u in mods}
    for u in mods:
        assert branches[u] == {id(p) for p in fusion.unimodal_heads[u].parameters()}
        assert not branches[u] & decision
    assert decision | set().union(*branches.values()) == {id(p) for p in fusion.parameters()}
    assert id(fusion.cls) in decision and all(id(p) in decision for p in fusion.tokens.parameters())

    feats = _features(mods)
    # the fused logits never use the heads; the unimodal logits never use Theta
    assert not _nonzero(_grads(fusion(feats).sum(), [p for u in mods for p in fusion.branch_parameters(u)]))
    uni = fusion.unimodal_logits(feats, detach_head=True)
    assert not _nonzero(_grads(sum(z.sum() for z in uni.values()), fusion.decision_parameters()))


def _sequence_model():
    """Three sequence modalities through the Transformer encoders, fused by the Transformer."""
    encoders = {u: ("transformer", {"d_in": 5, "d_model": DIMS[u], "layers": 1, "heads": 2, "max_len": 8})
                for u in DIMS}
    return build_model(encoders, "transformer", C)


@pytest.mark.parametrize("method_name", ["bmlr", "only_tpo"])
def test_targeted_parameter_optimization_isolates_gradients(method_name):
    model = _sequence_model()
    cfg = from_dict({"method": method_name, "fusion": "transformer", "alpha": 1.0, "beta": 0.0})
    inputs = {u: torch.randn(6, 7, 5) for u in DIMS}
    labels = torch.arange(6) % C
    result = METHODS.get(method_name)(cfg).training_step(model, inputs, labels)
    groups = model.parameter_groups()
    branch = [p for u in DIMS for p in groups[u]]
    unimodal_loss = sum(result.losses[u] for u in DIMS)
    # encoders + their heads: the same gradients without L^0, and L^0 alone gives them nothing
    for a, b in zip(_grads(result.loss, branch), _grads(unimodal_loss, branch)):
        torch.testing.assert_close(a, b)
    assert not _nonzero(_grads(result.losses["fused"], branch))
    # Theta (projections, [CLS], attention, output layer): L^0 only
    for a, b in zip(_grads(result.loss, groups["head"]), _grads(result.losses["fused"], groups["head"])):
        torch.testing.assert_close(a, b)
    assert not _nonzero(_grads(unimodal_loss, groups["head"]))
    # each modality's branch learns from its own unimodal loss only
    assert not _nonzero(_grads(result.losses["vision"], groups["text"]))
    assert _nonzero(_grads(result.losses["text"], groups["text"])) and _nonzero(_grads(result.loss, groups["head"]))


def test_joint_training_reaches_the_encoders_through_the_fusion():
    """The isolation check above can fail: without TPO, L^0 reaches the encoders."""
    model = _sequence_model()
    cfg = from_dict({"method": "uniform_baseline", "fusion": "transformer"})
    inputs = {u: torch.randn(6, 7, 5) for u in DIMS}
    result = METHODS.get("uniform_baseline")(cfg).training_step(model, inputs, torch.arange(6) % C)
    assert _nonzero(_grads(result.losses["fused"], model.parameter_groups()["text"]))
