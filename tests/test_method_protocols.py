"""Each method's authors' training settings (bmlr.methods.protocols) and how `tune.py compare`
and the recipes use them: the settings themselves, why they matter (OGM-GE's modulation under
SGD and under Adam), the rows they give, the fixed fusion, the recipes' names, and the
comparison settings that record them."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from bmlr.config import from_dict
from bmlr.engine import build_optimizer
from bmlr.methods import METHODS
from bmlr.methods.ogm_ge import modulated_parameters
from bmlr.methods.protocols import PROTOCOLS, REFERENCE_LR, Protocol, protocol_for
from bmlr.models import build_model
from bmlr.tuning import cli
from bmlr.tuning.compare import ComparisonError, arm_space, untuned_config
from bmlr.tuning.compare.cli import compare_rows, comparison_settings, recipe_rows
from bmlr.tuning.recipes import TABLE6_PAPER_ROWS, Arm, describe_recipes, get_recipe, method_arms
from bmlr.tuning.search_space import load_search_space, parse_search_space

ROOT = Path(__file__).resolve().parents[1]
C = 5


# ---------------------------------------------------------------------------------------------
# why: OGM-GE's coefficient survives SGD and cancels under Adam
def _tiny_model():
    torch.manual_seed(0)
    encoders = {"audio": ("resnet_audio", {"in_channels": 1, "base_width": 4, "blocks": (1, 1, 1, 1)}),
                "visual": ("resnet_visual", {"base_width": 4, "blocks": (1, 1, 1, 1)})}
    return build_model(encoders, "concat", C).double()  # float64: a step is ~1e-7 of a weight


def _one_step(settings: dict, alpha_ogm: float):
    """One OGM training step (no GE noise) from the same weights on the same batch: the
    parameter change of every modulated encoder weight, the coefficients, the weights before."""
    model = _tiny_model()
    cfg = from_dict({**settings, "method": "ogm_ge", "method_args": {"alpha_ogm": alpha_ogm, "ge": False}})
    method = METHODS.get("ogm_ge")(cfg)
    optimizer = build_optimizer(cfg, model)
    method.setup(model, optimizer)
    method.on_epoch_start(model, 0)
    g = torch.Generator().manual_seed(1)
    inputs = {"audio": torch.randn(8, 1, 24, 24, generator=g, dtype=torch.float64),
              "visual": torch.randn(8, 2, 3, 24, 24, generator=g, dtype=torch.float64)}
    labels = torch.arange(8) % C
    before = {id(p): p.detach().clone() for p in model.parameters()}
    result = method.training_step(model, inputs, labels)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    method.after_backward(model)
    optimizer.step()
    params = modulated_parameters(model, "conv")
    steps = {u: [p.detach() - before[id(p)] for p in ps] for u, ps in params.items()}
    weights = {u: [before[id(p)] for p in ps] for u, ps in params.items()}
    return steps, method.last_coefficients, weights


def _relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.norm() ** 2) for y in b) ** 0.5


def test_ogm_modulation_scales_the_dominant_step_under_sgd_and_cancels_under_adam():
    """Same weights, same batch: alpha_ogm = 0 gives k = 1 (tanh 0 = 0), alpha_ogm = 1 gives the
    dominant modality k = 1 - tanh(rho) < 1. Under OGM-GE's own optimizer (SGD, momentum 0.9,
    weight decay 1e-4: the protocol) the dominant encoder's first step is k times the
    unmodulated one (after the weight decay's own term); under plain Adam the two steps are the
    same up to Adam's epsilon: the modulation is divided out."""
    sgd = {k: v for k, v in PROTOCOLS["ogm_ge"].settings.items() if not k.startswith("method_args.")}
    assert (sgd["optimizer"], sgd["momentum"], sgd["weight_decay"]) == ("sgd", 0.9, 1e-4)
    plain, _, weights = _one_step(sgd, alpha_ogm=0.0)
    modulated, coeffs, _ = _one_step(sgd, alpha_ogm=1.0)
    dominant = min(coeffs, key=coeffs.get)
    other = max(coeffs, key=coeffs.get)
    k = coeffs[dominant]
    assert k < 0.9 and coeffs[other] == 1.0
    decay = sgd["lr"] * sgd["weight_decay"]  # first SGD step: -lr * (k g + wd w)
    for d1, dk, w in zip(plain[dominant], modulated[dominant], weights[dominant]):
        torch.testing.assert_close(dk + decay * w, k * (d1 + decay * w), rtol=1e-6, atol=1e-15)
    assert _relative_gap(modulated[dominant], plain[dominant]) == pytest.approx(1 - k, rel=1e-3)
    assert _relative_gap(modulated[other], plain[other]) < 1e-5  # k = 1 there: the same step

    adam = {"optimizer": "adam", "lr": sgd["lr"], "weight_decay": 0.0}
    plain, _, _ = _one_step(adam, alpha_ogm=0.0)
    modulated, coeffs, _ = _one_step(adam, alpha_ogm=1.0)
    assert coeffs[dominant] == pytest.approx(k)  # the same coefficient was applied
    gap = _relative_gap(modulated[dominant], plain[dominant])
    assert gap < 1e-3 < (1 - k) / 100, (gap, k)


# ---------------------------------------------------------------------------------------------
# the protocols themselves
def test_every_protocol_is_a_valid_configuration_of_its_method():
    for name, protocol in PROTOCOLS.items():
        assert protocol.method == name and protocol.source
        if name not in METHODS:  # a method of the paper not implemented (yet)
            continue
        cfg = from_dict({"method": name, **protocol.settings})
        METHODS.get(name)(cfg)  # its method_args are accepted
    for name in METHODS.names():  # every method says where its settings come from
        assert protocol_for(name).source
    assert protocol_for("nosuch").settings == {}
    with pytest.raises(ValueError, match="not training settings"):
        Protocol("x", "src", {"epochs": 3})


def test_authors_values():
    ogm = PROTOCOLS["ogm_ge"].settings
    assert dict(ogm) == {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr": 1e-3, "schedule": "step",
                         "step_size": 70, "gamma": 0.1, "method_args.modulation_starts": 0,
                         "method_args.modulation_ends": 50}
    assert "OGM-GE_CVPR2022" in PROTOCOLS["ogm_ge"].source
    assert PROTOCOLS["dgl"].settings["lr"] == 2e-3 and PROTOCOLS["aug"].settings["lr"] == 1e-2
    assert PROTOCOLS["mmpareto"].settings["schedule"] == "none"  # built but never stepped there
    for name in ("baseline", "uniform_baseline", "bmlr", "udi"):  # the paper's (= project's) / no public code
        assert PROTOCOLS[name].settings == {}
    assert "no public code" in PROTOCOLS["udi"].source


# ---------------------------------------------------------------------------------------------
# the rows of a comparison
def _space(name: str):
    return load_search_space(ROOT / "search_spaces" / f"{name}.yaml")


def test_rows_train_with_their_authors_settings():
    cremad = _space("cremad")  # the paper's scale: lr 5e-5, so the authors' lr exactly
    ogm = untuned_config(cremad, Arm("ogm_ge", "ogm_ge"), "cremad", None, {})
    assert (ogm.optimizer, ogm.lr, ogm.momentum, ogm.weight_decay, ogm.schedule, ogm.step_size, ogm.gamma) == (
        "sgd", 1e-3, 0.9, 1e-4, "step", 70, 0.1)
    assert (ogm.method_args["modulation_starts"], ogm.method_args["modulation_ends"]) == (0, 50)
    bmlr = untuned_config(cremad, Arm("bmlr", "bmlr"), "cremad", None, {})
    assert (bmlr.optimizer, bmlr.lr, bmlr.schedule) == ("adam", 5e-5, "none")
    # a CPU space that raises the project's lr raises the method's by the same factor
    avmnist = _space("avmnist")
    base_lr = avmnist.params["lr"].default
    ogm = untuned_config(avmnist, Arm("ogm_ge", "ogm_ge"), "avmnist", None, {})
    assert ogm.lr == pytest.approx(base_lr * 1e-3 / REFERENCE_LR)
    # --set wins, --protocol shared (Arm.protocol False) keeps the shared settings
    assert untuned_config(avmnist, Arm("ogm_ge", "ogm_ge"), "avmnist", None, {"lr": 0.3}).lr == 0.3
    shared = untuned_config(avmnist, Arm("ogm_ge", "ogm_ge", protocol=False), "avmnist", None, {})
    assert (shared.optimizer, shared.lr, shared.schedule) == ("adam", base_lr, "none")
    # a chosen optimizer other than the authors': their lr and schedule do not apply
    adam = untuned_config(avmnist, Arm("ogm_ge", "ogm_ge"), "avmnist", None, {"optimizer": "adam"})
    assert (adam.lr, adam.schedule) == (base_lr, "none")


def test_tuned_rows_keep_searched_keys_searched():
    space = parse_search_space({"search": {"lr": {"loguniform": [1e-5, 1e-3], "default": 5e-5},
                                           "momentum": {"uniform": [0.5, 0.99], "default": 0.9},
                                           "fusion": {"choice": ["concat", "sum"], "default": "concat"}},
                                "methods": {"dgl": {"fixed": {"weight_decay": 0.0}}}}, source="s.yaml")
    ogm = arm_space(space, method_arms(["ogm_ge"])[0], {})
    assert "fusion" not in ogm.params and ogm.fixed["fusion"] == "concat"  # the paper's Table I fusion
    lr = ogm.params["lr"]  # searched, moved to the authors' lr: 20 x the paper's Adam lr
    assert (lr.kind, lr.low, lr.high, lr.default) == ("loguniform", 2e-4, 2e-2, 1e-3)
    assert "momentum" in ogm.params and ogm.fixed["optimizer"] == "sgd"  # a searched key stays searched
    dgl = arm_space(space, Arm("dgl", "dgl"), {"lr": 1e-3})
    assert dgl.fixed["weight_decay"] == 0.0 and dgl.fixed["lr"] == 1e-3  # the method's section and --set win
    assert "fusion" in dgl.params  # a row without a fixed fusion (--search-fusion) searches it
    assert "authors' training settings: Jiang" in arm_space(space, Arm("aug", "aug"), {}).text


# ---------------------------------------------------------------------------------------------
# the command line: fusion, recipes, settings recorded
def _parse(command: str, *argv: str):
    """`bmlr-tune COMMAND ARGV...`, parsed by the one `bmlr-tune` parser."""
    return cli.build_parser(command).parse_args([command, *argv])


def _help(command: str, capsys) -> str:
    """What `bmlr-tune COMMAND --help` prints."""
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_compare_fixes_concat_unless_search_fusion_and_records_it(tmp_path):
    args = _parse("compare", "--methods", "baseline", "ogm_ge", "--study-seeds", "3")
    rows = compare_rows(args)
    assert all(a.fixed_dict == {"fusion": "concat"} for a in rows.arms)
    settings = asdict(comparison_settings(args, rows))
    assert (settings["study_seeds"], settings["search_fusion"], settings["protocols"]) == (3, False, "authors")
    args = _parse("compare", "--methods", "baseline", "--search-fusion", "--protocol", "shared")
    rows = compare_rows(args)
    assert rows.arms[0].fixed_dict == {}
    settings = comparison_settings(args, rows)
    assert settings.search_fusion and settings.protocols == "shared" and not settings.arm_list()[0].protocol
    t3 = recipe_rows(_parse("recipe", "table3", "--search-fusion"))
    assert all("fusion" not in a.fixed_dict for a in t3.arms)
    with pytest.raises(ComparisonError, match="compares the fusions"):
        recipe_rows(_parse("recipe", "table2", "--search-fusion"))


def test_study_seeds_are_checked(tmp_path, capsys):
    storage = ["--storage", str(tmp_path / "runs")]
    assert cli.main(["compare", "--methods", "baseline", "--study-seeds", "0", *storage]) == 2
    assert "--study-seeds must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "synthetic").exists()


def test_recipes_name_what_they_reproduce(capsys):
    t6 = get_recipe("Table-VI")
    assert t6 is not get_recipe("table1") and t6.name == "table6"
    assert [a.method for a in t6.arms] == [m for m in TABLE6_PAPER_ROWS if m in METHODS]
    assert {"baseline", "dgl", "bmlr"} <= {a.method for a in t6.arms}
    missing = [m for m in TABLE6_PAPER_ROWS if m not in METHODS]
    assert all(m in " ".join(t6.notes) for m in missing)
    listing = describe_recipes()
    assert "table6" in listing and "not rows of the paper's Table I" in listing
    help_text = _help("recipe", capsys) + _help("compare", capsys)
    assert "own protocol" not in help_text and "untuned defaults" in " ".join(help_text.split())


# ---------------------------------------------------------------------------------------------
# search spaces: CREMA-D frames agree with configs/cremad.yaml, beta reaches towards 0
def test_cremad_frames_agree_and_beta_reaches_towards_zero():
    config = yaml.safe_load((ROOT / "configs" / "cremad.yaml").read_text())
    assert _space("cremad").fixed["frames"] == config["frames"] == 1
    for name in ("synthetic", "cremad", "ks", "ave", "avmnist", "mosi", "mosei", "manifest"):
        beta = _space(name).params["beta"]
        text = (ROOT / "search_spaces" / f"{name}.yaml").read_text()
        # the synthetic space keeps 0.05 (the benchmarks' range) and says why
        assert beta.low <= 0.01 or (name == "synthetic" and "bench/" in text), name
        assert beta.high == 0.95 and "concat is best with BMLR on all three" not in text, name
