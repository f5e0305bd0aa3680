"""Tests for bmlr.models: ResNet-18, encoders, fusions, MultimodalModel, build_model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bmlr.models import ENCODERS, FUSIONS, MultimodalModel, ResNet18, build_model
from bmlr.models.fusion import Fusion

TINY_RESNET = {"base_width": 4, "blocks": (1, 1, 1, 1)}
TINY_TRANSFORMER = {"d_in": 7, "d_model": 16, "layers": 1, "heads": 4, "max_len": 32}
ALL_FUSIONS = ["concat", "sum", "film", "gated", "transformer"]
DECOMPOSABLE = ["concat", "sum"]
SEPARATE = ["film", "gated", "transformer"]
C = 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _expected_resnet_params(in_channels: int, base_width: int, blocks) -> int:
    """Parameter count of the architecture, derived from its layers (conv weights + BN affine)."""

    def conv(i, o, k):
        return i * o * k * k

    def bn(c):
        return 2 * c

    w = base_width
    total = conv(in_channels, w, 7) + bn(w)
    in_ch = w
    for width, stride, n in zip((w, 2 * w, 4 * w, 8 * w), (1, 2, 2, 2), blocks):
        for j in range(n):
            cin = in_ch if j == 0 else width
            total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if j == 0 and (stride != 1 or cin != width):
                total += conv(cin, width, 1) + bn(width)
        in_ch = width
    return total


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _features(modalities, dims, batch=3):
    return {u: torch.randn(batch, dims[u], requires_grad=True) for u in modalities}


def _fusion(name, modalities, dims) -> Fusion:
    return FUSIONS.get(name)(list(modalities), dims, C)


def _tiny_specs(n_modalities: int):
    specs = {
        "audio": ("resnet_audio", dict(in_channels=1, **TINY_RESNET)),
        "visual": ("resnet_visual", dict(in_channels=3, **TINY_RESNET)),
        "text": ("transformer", dict(TINY_TRANSFORMER)),
    }
    return dict(list(specs.items())[:n_modalities])


def _tiny_inputs(n_modalities: int, batch=2):
    inputs = {
        "audio": torch.randn(batch, 1, 32, 32),
        "visual": torch.randn(batch, 2, 3, 32, 32),
        "text": torch.randn(batch, 6, 7),
    }
    return dict(list(inputs.items())[:n_modalities])


# ----------------------------------------------------------------------------- ResNet
def test_resnet_tiny_feature_map_shape_and_param_count():
    net = ResNet18(3, **TINY_RESNET)
    assert net.out_channels == 32
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 32, 1, 1)  # stride 32 overall, no pooling / fc
    assert _n_params(net) == _expected_resnet_params(3, 4, (1, 1, 1, 1))
    assert not any(isinstance(m, nn.Linear) for m in net.modules())


def test_resnet18_full_size_parameter_count():
    net = ResNet18(3)  # constructed once: the paper's ResNet-18, without fc
    expected = _expected_resnet_params(3, 64, (2, 2, 2, 2))
    assert expected == 11_176_512  # torchvision resnet18 (11,689,512) minus fc (513,000)
    assert _n_params(net) == expected
    assert net.out_channels == 512


def test_resnet_rejects_bad_input():
    net = ResNet18(1, **TINY_RESNET)
    with pytest.raises(ValueError):
        net(torch.randn(2, 3, 32, 32))


# ----------------------------------------------------------------------------- encoders
def test_registries_list_expected_names():
    assert ENCODERS.names() == ["mlp", "resnet_audio", "resnet_visual", "transformer"]
    assert FUSIONS.names() == sorted(ALL_FUSIONS)


def test_resnet_audio_shape():
    enc = ENCODERS.get("resnet_audio")(in_channels=1, **TINY_RESNET)
    assert enc.out_dim == 32
    assert enc(torch.randn(2, 1, 32, 40)).shape == (2, 32)


def test_resnet_visual_shape_and_time_space_average():
    enc = ENCODERS.get("resnet_visual")(in_channels=3, **TINY_RESNET)
    assert enc.out_dim == 32
    x = torch.randn(2, 3, 3, 64, 64)
    assert enc(x).shape == (2, 32)
    enc.eval()  # BatchNorm in eval: per-frame computation is batch-independent
    with torch.no_grad():
        got = enc(x)
        maps = torch.stack([enc.backbone(x[:, t]) for t in range(3)], dim=1)  # [B,T,c,h,w]
        assert maps.shape[-2:] == (2, 2)
        want = maps.mean(dim=(1, 3, 4))
    torch.testing.assert_close(got, want)


def test_transformer_shape_and_max_len():
    enc = ENCODERS.get("transformer")(**TINY_TRANSFORMER)
    assert enc.out_dim == 16
    assert enc(torch.randn(3, 10, 7)).shape == (3, 16)
    with pytest.raises(ValueError):
        enc(torch.randn(1, 33, 7))


def test_transformer_defaults():
    enc = ENCODERS.get("transformer")(d_in=5)
    assert enc.out_dim == 64 and enc.max_len == 512
    assert len(enc.encoder.layers) == 2
    assert enc.encoder.layers[0].self_attn.num_heads == 4
    assert enc.encoder.layers[0].norm_first


# ----------------------------------------------------------------------------- fusions
@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_fusion_shapes(name, n_mod):
    mods = ["a", "v", "t"][:n_mod]
    dims = {"a": 6, "v": 8, "t": 4}
    fusion = _fusion(name, mods, dims)
    feats = _features(mods, dims)
    fused = fusion(feats)
    assert fused.shape == (3, C)
    uni = fusion.unimodal_logits(feats)
    assert list(uni) == mods
    assert all(v.shape == (3, C) for v in uni.values())
    assert fusion.separate_unimodal_heads == (name in SEPARATE)


@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("name", DECOMPOSABLE)
def test_unimodal_logits_sum_to_fused(name, n_mod):
    mods = ["a", "v", "t"][:n_mod]
    dims = {"a": 6, "v": 8, "t": 4}
    fusion = _fusion(name, mods, dims)
    feats = _features(mods, dims)
    for detach in (False, True):
        uni = fusion.unimodal_logits(feats, detach_head=detach)
        torch.testing.assert_close(sum(uni.values()), fusion(feats))


def test_concat_unimodal_is_column_block_plus_half_bias():
    fusion = _fusion("concat", ["a", "v"], {"a": 6, "v": 8})
    feats = _features(["a", "v"], {"a": 6, "v": 8})
    W, b = fusion.fc.weight, fusion.fc.bias
    uni = fusion.unimodal_logits(feats)
    torch.testing.assert_close(uni["a"], feats["a"] @ W[:, :6].T + b / 2)  # equation 3
    torch.testing.assert_close(uni["v"], feats["v"] @ W[:, 6:].T + b / 2)
    assert {id(p) for p in fusion.decision_parameters()} == {id(W), id(b)}


@pytest.mark.parametrize("name", DECOMPOSABLE)
def test_detach_head_grads_reach_features_only(name):
    mods, dims = ["a", "v"], {"a": 6, "v": 8}
    fusion = _fusion(name, mods, dims)
    feats = _features(mods, dims)
    loss = sum(v.logsumexp(dim=1).sum() for v in fusion.unimodal_logits(feats, detach_head=True).values())
    loss.backward()
    for p in fusion.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for u in mods:
        assert feats[u].grad is not None and torch.count_nonzero(feats[u].grad) > 0

    # without detaching, the same loss does reach the decision layer
    fusion.zero_grad()
    loss = sum(v.logsumexp(dim=1).sum() for v in fusion.unimodal_logits(feats).values())
    loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in fusion.decision_parameters())


@pytest.mark.parametrize("name", SEPARATE)
def test_separate_heads_are_branch_parameters(name):
    mods, dims = ["a", "v", "t"], {"a": 6, "v": 8, "t": 4}
    fusion = _fusion(name, mods, dims)
    decision = {id(p) for p in fusion.decision_parameters()}
    branch_ids = set()
    for u in mods:
        branch = fusion.branch_parameters(u)
        assert {id(p) for p in branch} == {id(p) for p in fusion.unimodal_heads[u].parameters()}
        assert len(branch) == 2
        assert not decision & {id(p) for p in branch}
        branch_ids |= {id(p) for p in branch}
    assert decision | branch_ids == {id(p) for p in fusion.parameters()}

    feats = _features(mods, dims)
    # detach_head does not apply: the unimodal loss trains the heads
    uni = fusion.unimodal_logits(feats, detach_head=True)
    sum(v.sum() for v in uni.values()).backward()
    for u in mods:
        assert fusion.unimodal_heads[u].weight.grad is not None
        assert torch.count_nonzero(fusion.unimodal_heads[u].weight.grad) > 0
    # and the fused logits do not use the heads
    fusion.zero_grad(set_to_none=True)
    fusion(feats).sum().backward()
    for u in mods:
        assert fusion.unimodal_heads[u].weight.grad is None


@pytest.mark.parametrize("name", DECOMPOSABLE)
def test_decomposable_fusions_have_no_branch_parameters(name):
    fusion = _fusion(name, ["a", "v"], {"a": 6, "v": 8})
    assert fusion.branch_parameters("a") == [] and fusion.branch_parameters("v") == []
    assert {id(p) for p in fusion.decision_parameters()} == {id(p) for p in fusion.parameters()}
    with pytest.raises(KeyError):
        fusion.branch_parameters("x")


@pytest.mark.parametrize("name", SEPARATE)
def test_separate_head_fusions_need_two_modalities(name):
    with pytest.raises(ValueError):
        _fusion(name, ["a"], {"a": 6})


def test_film_first_modality_conditions_the_others():
    fusion = _fusion("film", ["a", "v"], {"a": 6, "v": 8})
    feats = _features(["a", "v"], {"a": 6, "v": 8})
    gamma, beta = fusion.film["v"](feats["a"]).chunk(2, dim=1)
    torch.testing.assert_close(fusion(feats), fusion.fc_out(gamma * feats["v"] + beta))


def test_gated_first_modality_gates_the_others():
    fusion = _fusion("gated", ["a", "v"], {"a": 6, "v": 8})
    feats = _features(["a", "v"], {"a": 6, "v": 8})
    want = fusion.fc_out(torch.sigmoid(fusion.proj["a"](feats["a"])) * fusion.proj["v"](feats["v"]))
    torch.testing.assert_close(fusion(feats), want)


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_build_model_forward_and_parameter_groups(name, n_mod):
    model = build_model(_tiny_specs(n_mod), name, C)
    assert isinstance(model, MultimodalModel)
    mods = list(_tiny_specs(n_mod))
    assert model.modalities == mods and list(model.encoders) == mods

    fused, uni = model(_tiny_inputs(n_mod))
    assert fused.shape == (2, C)
    assert list(uni) == mods and all(v.shape == (2, C) for v in uni.values())
    (fused.sum() + sum(v.sum() for v in uni.values())).backward()

    groups = model.parameter_groups()
    assert list(groups) == mods + ["head"]
    all_ids = [id(p) for p in model.parameters()]
    grouped_ids = [id(p) for params in groups.values() for p in params]
    assert len(grouped_ids) == len(set(grouped_ids))  # no parameter twice
    assert set(grouped_ids) == set(all_ids)  # every parameter somewhere
    for u in mods:
        enc_ids = {id(p) for p in model.encoders[u].parameters()}
        assert enc_ids <= {id(p) for p in groups[u]}
    head_ids = {id(p) for p in groups["head"]}
    assert head_ids == {id(p) for p in model.fusion.decision_parameters()}
    if name in SEPARATE:
        for u in mods:
            head_u = {id(p) for p in model.fusion.unimodal_heads[u].parameters()}
            assert head_u <= {id(p) for p in groups[u]}
            assert not head_u & head_ids
    else:
        assert all(len(groups[u]) == len(list(model.encoders[u].parameters())) for u in mods)


def test_build_model_unknown_fusion_raises_keyerror_listing_valid():
    with pytest.raises(KeyError) as info:
        build_model(_tiny_specs(2), "attention", C)
    msg = str(info.value)
    assert "attention" in msg
    for name in ALL_FUSIONS:
        assert name in msg


def test_build_model_unknown_encoder_raises_keyerror_listing_valid():
    with pytest.raises(KeyError) as info:
        build_model({"audio": ("vgg", {}), "visual": ("resnet_visual", TINY_RESNET)}, "concat", C)
    msg = str(info.value)
    assert "vgg" in msg and "resnet_audio" in msg and "transformer" in msg


def test_multimodal_model_rejects_mismatched_encoders():
    enc = {"a": ENCODERS.get("resnet_audio")(**TINY_RESNET)}
    with pytest.raises(ValueError):
        MultimodalModel(enc, _fusion("concat", ["a"], {"a": 99}))
    with pytest.raises(ValueError):
        MultimodalModel(enc, _fusion("concat", ["a", "v"], {"a": 32, "v": 32}))
