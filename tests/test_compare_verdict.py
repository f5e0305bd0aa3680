"""A comparison's verdict (bmlr.tuning.compare.verdict, issue 29 item 1): each row against the
reference and the best row, paired over study seeds x training seeds, two standard errors of the
difference and a word for it; hand-checkable numbers."""
from __future__ import annotations

import pytest

from bmlr.tuning.compare.verdict import difference, runs_of, verdict_lines


def _row(label: str, accs: list[list[float]]) -> dict:
    """accs[study seed][training seed] -> a row as a comparison records it."""
    searches = [{"study_seed": s, "results": {"seeds": [{"seed": t, "test": {"acc": a}} for t, a in enumerate(row)]}}
                for s, row in enumerate(accs)]
    return {"label": label, **searches[0], **({"searches": searches} if len(searches) > 1 else {})}


def test_paired_over_study_seeds_the_noise_is_the_spread_of_the_per_seed_differences():
    base = _row("baseline", [[0.90, 0.92], [0.91, 0.93]])
    bmlr = _row("bmlr", [[0.94, 0.96], [0.92, 0.94]])  # +4 points in study seed 0, +1 in study seed 1
    assert runs_of(bmlr) == {(0, 0): 0.94, (0, 1): 0.96, (1, 0): 0.92, (1, 1): 0.94}
    d = difference(bmlr, base)
    # mean of (+4, +1) = +2.5; stdev 2.1213 / sqrt(2) = 1.5; two SE 3.0
    assert d.points == pytest.approx(2.5) and d.two_se == pytest.approx(3.0)
    assert d.verdict == "within the noise" and d.text() == ("bmlr - baseline: +2.50 ± 3.00 (paired, over 2 study "
                                                            "seeds): within the noise")
    far = _row("far", [[0.99, 0.99], [0.98, 0.98]])  # +8.0 and +6.0: mean +7, two SE 2.0
    assert difference(far, base).verdict == "ahead" and difference(base, far).verdict == "behind"


def test_one_study_seed_pairs_training_seeds_and_says_the_search_luck_is_left_out():
    d = difference(_row("a", [[0.92, 0.94, 0.93]]), _row("b", [[0.90, 0.91, 0.93]]))
    # differences +2, +3, 0: mean 1.667, stdev 1.5275 / sqrt(3) = 0.8819; two SE 1.764
    assert d.points == pytest.approx(5 / 3) and d.two_se == pytest.approx(1.7638, abs=1e-4)
    assert "over 3 training seeds only" in d.basis and d.verdict == "within the noise"


def test_rows_that_do_not_pair_are_compared_by_their_means():
    d = difference(_row("a", [[0.90, 0.94]]), _row("b", [[0.90, 0.92, 0.94]]))
    # means 92 and 92; SEs 2/sqrt(2)... stdev(90, 94) = 2.828 / sqrt(2) = 2; stdev(90, 92, 94) = 2 / sqrt(3)
    assert d.points == pytest.approx(0.0, abs=1e-9) and d.basis == "unpaired, 2 and 3 runs"
    assert d.two_se == pytest.approx(2 * (4 + 4 / 3) ** 0.5)


def test_the_section_names_every_row_against_the_reference_and_the_best_and_groups_the_ties():
    rows = [_row("baseline", [[0.90, 0.92], [0.91, 0.93]]), _row("bmlr", [[0.94, 0.96], [0.92, 0.94]]),
            _row("only_tpo", [[0.99, 0.99], [0.98, 0.98]]), {"label": "failed"}]
    lines = verdict_lines(rows, "baseline")
    assert lines[0].startswith("Differences in test accuracy")
    assert "- bmlr - baseline: +2.50 ± 3.00 (paired, over 2 study seeds): within the noise" in lines
    assert "- only_tpo - baseline: +7.00 ± 2.00 (paired, over 2 study seeds): ahead" in lines
    # per study seed +4 and +5 (2 SE 1.00), but the runs +5, +3, +6, +4 vary more: 2 SE 1.29
    assert "- only_tpo - bmlr: +4.50 ± 1.29 (paired, over 2 study seeds): ahead" in lines
    assert lines[-1] == "Cannot be told apart from the best row (only_tpo): none."
    assert verdict_lines(rows[:1], "baseline") == []  # one row: nothing to compare
    close = verdict_lines(rows[:2], "baseline")
    assert close[-1] == "Cannot be told apart from the best row (bmlr): baseline."
    assert sum(line.startswith("- ") for line in close) == 1  # the best is the reference's only pair


def test_searches_that_export_the_same_winner_still_carry_the_training_noise():
    """Both study seeds exported the same configuration, so both trained the same runs: the per-seed
    differences agree exactly, and the interval is the training seeds' (never ± 0)."""
    a = _row("a", [[0.95, 0.94, 0.96], [0.95, 0.94, 0.96]])
    b = _row("b", [[0.94, 0.945, 0.94], [0.94, 0.945, 0.94]])
    d = difference(a, b)
    # runs +1, -0.5, +2 (twice): mean 0.833, stdev 1.1255 / sqrt(6), twice: 0.919
    assert d.points == pytest.approx(0.8333, abs=1e-4) and d.two_se == pytest.approx(0.9189, abs=1e-4)
    assert d.verdict == "within the noise"


def test_the_ranking_groups_follow_the_means_down():
    """A noisy row with a lower mean is never ranked above a steadier one with a higher mean: b is
    behind a, c behind b; d (mean 93.5) cannot be told from b, but c stands between them."""
    from bmlr.tuning.compare.verdict import groups

    a = _row("a", [[0.960, 0.961, 0.959], [0.960, 0.961, 0.959]])
    b = _row("b", [[0.950, 0.951, 0.949], [0.950, 0.951, 0.949]])
    c = _row("c", [[0.940, 0.941, 0.939], [0.940, 0.941, 0.939]])
    d = _row("d", [[0.90, 0.99, 0.92], [0.97, 0.89, 0.94]])
    assert difference(b, d).verdict == "within the noise" and difference(c, d).verdict == "within the noise"
    assert [[r["label"] for r in g] for g in groups([d, c, b, a])] == [["a"], ["b"], ["c", "d"]]
