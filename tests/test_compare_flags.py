"""Which rows' places rest on their own search (bmlr.tuning.compare.flags, issue 29 item 2), and
the grouped ranking: rows built in memory as a comparison records them (each search's
production runs, its searched ranges, its winner and every trial's values), with a planted
losing method and planted unlucky searches."""
from __future__ import annotations

import pytest

from bmlr.tuning.compare.flags import edge_of, search_flags
from bmlr.tuning.compare.tables import accuracy_table, ranking_line, render_markdown, verdict_tags
from bmlr.tuning.compare.verdict import difference, groups

LR = {"kind": "loguniform", "low": 1e-4, "high": 1e-2, "choices": []}
FUSION = {"kind": "choice", "low": None, "high": None, "choices": ["concat", "sum"]}
# the lr values a row's 8 trials draw (4 per searched key, the default): with common random
# numbers, every row draws these
CRN_LRS = [1.2e-4, 3.1e-4, 8.0e-4, 1.1e-3, 2.4e-3, 5.0e-3, 1.6e-4, 6.5e-4]


def _search(seed: int, accs: list[float], winner_lr: float, lr: dict = LR, drawn=CRN_LRS) -> dict:
    results = {"seeds": [{"seed": t, "test": {"acc": a}} for t, a in enumerate(accs)],
               "summary": {"test_acc": {"mean": sum(accs) / len(accs), "std": 0.0}}}
    return {"study_seed": seed, "trials": len(drawn), "results": results, "searched": {"lr": lr, "fusion": FUSION},
            "winner": {"lr": winner_lr, "fusion": "concat"}, "drawn": {"lr": list(drawn), "fusion": ["concat", "sum"]}}


def _row(label: str, *searches: dict) -> dict:
    return {"label": label, "method": label, "startup_trials": 4, "crn": True, **searches[0],
            "searches": list(searches)}


def _settings(samples: int = 6):
    from bmlr.tuning.compare import ComparisonSettings

    return ComparisonSettings(dataset="avmnist", arms=[{"label": "baseline", "method": "baseline"}],
                              samples=samples, reference="baseline", name="t", study_seeds=2)


def test_a_planted_losing_method_is_behind_with_an_interval_excluding_zero_and_not_flagged():
    """The method loses on every study seed and training seed by about 3 points; both rows drew
    the same lrs (common random numbers) and won at the same one: nothing points at the search."""
    baseline = _row("baseline", _search(0, [0.90, 0.91, 0.92], 1.1e-3), _search(1, [0.91, 0.92, 0.90], 1.1e-3))
    loser = _row("shuffled", _search(0, [0.87, 0.88, 0.885], 1.1e-3), _search(1, [0.88, 0.885, 0.87], 1.1e-3))
    rows = [baseline, loser]
    d = difference(loser, baseline)
    # per study seed: -3.17 and -3.17 points: their spread is 0, so the training seeds' noise sets
    # the interval (runs -3, -3, -3.5, -3, -3.5, -3: sd 0.258 / sqrt(6), twice: 0.21)
    assert d.points == pytest.approx(-3.1667, abs=1e-3) and d.verdict == "behind"
    assert d.two_se == pytest.approx(0.2108, abs=1e-3)
    assert d.points + d.two_se < 0  # the interval excludes zero
    assert search_flags(rows, samples=6) == {"baseline": [], "shuffled": []}
    table = accuracy_table(rows, "baseline", tuned=True, flags=search_flags(rows, 6)).splitlines()
    assert table[3].startswith("| shuffled | 87.83 ± 0.00 | -3.17 ± 0.21 behind | -3.17 ± 0.21 behind |")
    assert table[3].endswith(" |  |")  # no flag
    assert ranking_line(rows, {}) == "baseline (91.00) > shuffled (87.83)"
    markdown = render_markdown("t", rows, _settings(), "x")
    assert "baseline (91.00) > shuffled (87.83)." in markdown and "flag *" not in markdown


def test_a_planted_unlucky_search_is_flagged_with_its_reasons_and_its_interval_is_wide():
    """The row's space stops at lr 1e-3, below the 2.4e-3 where the other row won, and its two
    searches disagree by far more than their training noise."""
    narrow = {**LR, "high": 1e-3}
    lucky = _row("baseline", _search(0, [0.90, 0.91, 0.92], 2.4e-3), _search(1, [0.91, 0.90, 0.92], 2.4e-3))
    unlucky = _row("bmlr",
                   _search(0, [0.93, 0.92, 0.93], 9.5e-4, lr=narrow,
                           drawn=[1.2e-4, 3.1e-4, 9.5e-4, 1.5e-4, 4e-4, 2e-4, 5e-4, 2.5e-4]),
                   _search(1, [0.84, 0.85, 0.84], 2.0e-4, lr=narrow,
                           drawn=[1.5e-4, 2.0e-4, 6.0e-4, 1.1e-4, 8e-4, 3e-4, 2.5e-4, 4.5e-4]))
    rows = [lucky, unlucky]
    flags = dict(search_flags(rows, samples=6)["bmlr"])
    assert flags["seeds"] == ("study seeds disagree: 92.67 (seed 0) vs 84.33 (seed 1), 8.33 points apart "
                              "(2 SE of training noise 0.94)")
    assert flags["missed"] == "its lr range excludes 0.0024, where baseline won"
    assert flags["edge"] == "study seed 0: lr = 0.00095 at the top of [0.0001, 0.001]"
    assert search_flags(rows, samples=6)["baseline"] == []
    d = difference(unlucky, lucky)  # per study seed: +1.67 and -6.67: the interval spans zero widely
    assert d.points == pytest.approx(-2.5) and d.two_se == pytest.approx(8.3333, abs=1e-3)
    assert d.verdict == "within the noise"
    tags = verdict_tags(rows, _settings())
    assert tags["ranking"] == "baseline (91.00) ≈ bmlr (88.50; flagged: seeds, edge, missed)"
    assert tags["verdict.bmlr"] == "vs baseline: -2.50 ± 8.33 within the noise"
    assert tags["flags.bmlr"].startswith("study seeds disagree: 92.67 (seed 0)")
    markdown = render_markdown("t", rows, _settings(), "x")
    assert "- flag *seeds*:" in markdown and "- flag *missed*:" in markdown and "- flag *edge*:" in markdown


def test_a_winning_region_its_trials_never_drew_is_flagged_only_below_the_row_that_found_it():
    found = _row("a", _search(0, [0.95, 0.96], 5.0e-3))  # its sixth trial drew 5e-3 and won
    never = _row("b", _search(0, [0.90, 0.91], 1.1e-3, drawn=[*CRN_LRS[:5], 1.5e-4, *CRN_LRS[6:]]))  # its sixth went low
    flags = search_flags([found, never], samples=8)
    assert flags["b"] == [("missed", "none of its trials drew lr near 0.005, where a won")]
    assert flags["a"] == []  # a is the better row: b's winner was its draw too
    # near: within a tenth of the range on its scale (log: 0.2 decades of 1e-4..1e-2)
    near = _row("c", _search(0, [0.9, 0.91], 1.1e-3, drawn=[*CRN_LRS[:5], 3.6e-3, *CRN_LRS[6:]]))
    assert search_flags([found, near], samples=8)["c"] == []
    # an lr is another step with another optimizer: an SGD row is not held to where an Adam row won
    for row, optimizer in ((found, "adam"), (never, "sgd")):
        for search in row["searches"]:
            search["results"]["config"] = {"optimizer": optimizer}
    assert search_flags([found, never], samples=8)["b"] == []


def test_the_budget_flag_reads_each_rows_own_trials():
    """With per-key budgets a row searching more keys ran more trials: a row is flagged where its
    own trials stayed within TPE's random start-up, or below 4 per key it searches (lr and fusion
    here: 8)."""
    few = _row("few", _search(0, [0.9, 0.91], 1.1e-3, drawn=CRN_LRS[:4]))  # 4 trials <= 4 start-up
    short = _row("short", _search(0, [0.9, 0.91], 1.1e-3, drawn=CRN_LRS[:6]))  # 6 trials for 2 keys
    many = _row("many", _search(0, [0.9, 0.91], 1.1e-3))  # 8 trials
    flags = search_flags([few, short, many])
    assert flags == {"few": [("budget", "random search only (4 trials <= 4 start-up)")],
                     "short": [("budget", "6 trials for 2 searched keys, fewer than 4 per key")], "many": []}
    settings = _settings().__class__(dataset="avmnist", arms=[{"label": "few", "method": "baseline"}], name="t",
                                     samples_per_key=3)
    assert settings.row_samples(1) == 3 and settings.row_samples(4) == 12
    assert "each row tuned with 3 trials per searched key (few 4, many 8)" in render_markdown("t", [few, many],
                                                                                                settings, "x")


def test_the_default_budget_is_four_trials_per_searched_key_and_at_least_sixteen():
    """Neither --samples nor --samples-per-key: the measured default (docs/comparisons.md); either
    of them: the user's, with no floor."""
    import argparse

    from bmlr.tuning.compare.cli import budget
    from bmlr.tuning.compare.settings import ComparisonSettings

    def settings(**options):
        args = argparse.Namespace(**{"samples": None, "samples_per_key": None, **options})
        return ComparisonSettings(dataset="avmnist", arms=[{"label": "b", "method": "baseline"}], name="t",
                                  **budget(args))

    default = settings()
    assert [default.row_samples(k) for k in (1, 3, 4, 5, 6)] == [16, 16, 16, 20, 24]
    assert default.budget_text() == "4 trials per searched key, at least 16"
    assert [settings(samples=10).row_samples(k) for k in (1, 5)] == [10, 10]
    assert settings(samples=10).budget_text() == "10 trials per row"
    assert [settings(samples_per_key=2).row_samples(k) for k in (1, 5)] == [2, 10]


def test_seeds_that_agree_within_their_training_noise_are_not_flagged():
    row = _row("r", _search(0, [0.90, 0.92, 0.94], 1.1e-3), _search(1, [0.91, 0.93, 0.89], 1.1e-3))
    assert search_flags([row], samples=6) == {"r": []}
    one_seed = _row("s", _search(0, [0.90], 1.1e-3), _search(1, [0.80], 1.1e-3))  # one training seed: no noise known
    assert search_flags([one_seed], samples=6) == {"s": []}


def test_edges_on_the_ranges_own_scale():
    assert edge_of(LR, 1.5e-4) == "bottom" and edge_of(LR, 7e-3) == "top" and edge_of(LR, 1e-3) is None
    linear = {"kind": "uniform", "low": 0.0, "high": 1.0}
    assert edge_of(linear, 0.95) == "top" and edge_of(linear, 0.5) is None
    assert edge_of(FUSION, "concat") is None


def test_groups_are_greedy_from_the_best():
    def row(label, accs):
        return {"label": label, "results": {"seeds": [{"seed": t, "test": {"acc": a}} for t, a in enumerate(accs)]}}
    a, b, c = row("a", [0.95, 0.96, 0.97]), row("b", [0.94, 0.97, 0.95]), row("c", [0.80, 0.81, 0.79])
    assert [[r["label"] for r in g] for g in groups([c, b, a])] == [["a", "b"], ["c"]]
