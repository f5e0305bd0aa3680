"""The comparison's tables in Markdown, from the rows' `results.json` only: Table I style
(test accuracy), Table III style (per-modality accuracy and imbalance ratio), Table II style
(each fusion with and without BMLR), and the whole `comparison.md`.

A tuned row searched with several study seeds (`--study-seeds`) shows the spread of its
searches' winners (mean ± std over study seeds of each winner's mean test accuracy). Each row's
difference from the reference and from the best row, with two standard errors and a verdict
(:mod:`~bmlr.tuning.compare.verdict`), sits in the table; the ranking is groups of rows that
cannot be told apart; rows whose place rests on their own search are flagged with the reason
(:mod:`~bmlr.tuning.compare.flags`) and keep their place."""
from __future__ import annotations

import statistics

from bmlr.methods import METHODS
from bmlr.tuning.compare.settings import ComparisonSettings, slug
from bmlr.tuning.compare.flags import FLAG_NOTES, search_flags
from bmlr.tuning.compare.records import searches_of
from bmlr.tuning.compare.verdict import Difference, best_row, difference, groups, verdict_lines

__all__ = ["modalities_of", "searches_of", "row_accuracy", "search_flags", "accuracy_table", "modality_table",
           "fusion_table", "readings", "render_markdown", "ranking_line", "verdict_tags", "FLAG_NOTES"]


def modalities_of(results: dict) -> list[str]:
    """The modalities a run reports test accuracy of (`test_acc_<modality>`), in its order."""
    return [k[len("test_acc_"):] for k in results["summary"] if k.startswith("test_acc_")]


def _pct(stats: dict | None) -> str:
    if not stats:
        return "-"
    std = stats["std"]
    return f"{100 * stats['mean']:.2f} ± {100 * std:.2f}" if std == std else f"{100 * stats['mean']:.2f} ± -"


def _spread(values: list[float]) -> dict[str, float] | None:
    """Mean and sample std (nan for one value) of `values`; None for none."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else float("nan")}


def row_accuracy(row: dict) -> dict[str, float] | None:
    """The row's test accuracy: its run's mean ± std over production seeds (one search), or the
    mean ± std over study seeds of each search's winner's mean (several); None: no result."""
    searches = searches_of(row)
    if len(searches) == 1:
        res = row.get("results")
        return res["summary"]["test_acc"] if res else None
    return _spread([s["results"]["summary"]["test_acc"]["mean"] for s in searches if s.get("results")])


def _best_vals(row: dict) -> list[float]:
    return [s["best_val_acc"] for s in searches_of(row) if isinstance(s.get("best_val_acc"), (int, float))]


def _ratio(stats: dict | None) -> str:
    if not stats:
        return "-"
    mean, std = stats["mean"], stats["std"]
    if mean != mean or mean in (float("inf"), float("-inf")):
        return "inf"
    return f"{mean:.2f} ± {std:.2f}" if std == std and std != float("inf") else f"{mean:.2f}"


def _delta(a: dict | None, b: dict | None) -> str:
    """Mean test accuracy of results `a` minus that of results `b`, in points."""
    if not a or not b:
        return "-"
    d = 100 * (a["summary"]["test_acc"]["mean"] - b["summary"]["test_acc"]["mean"])
    return f"{d:+.2f}"


def _verdict_cell(d: Difference | None) -> str:
    """A difference as a table cell: points ± two standard errors and the verdict."""
    if d is None:
        return "-"
    band = "" if d.two_se is None else f" ± {d.two_se:.2f}"
    return f"{d.points:+.2f}{band} {d.verdict}"


def _search_cells(r: dict, multi: bool) -> list[str]:
    """A tuned row's trials, epochs searched, best validation score (mean ± std over study
    seeds where several) and (several) each search's winner's test accuracy."""
    vals = _best_vals(r)
    if not multi:
        val = r.get("best_val_acc")
        return [str(r.get("trials", "-")), str(r.get("epochs_searched", "-")),
                f"{100 * val:.2f}" if isinstance(val, (int, float)) else "-"]
    searches = searches_of(r)
    winners = " / ".join(f"{100 * s['results']['summary']['test_acc']['mean']:.2f}" if s.get("results") else "failed"
                         for s in searches)
    return ["/".join(str(s.get("trials", "-")) for s in searches),
            str(sum(int(s.get("epochs_searched") or 0) for s in searches)), _pct(_spread(vals)), winners]


def accuracy_table(rows: list[dict], reference: str | None, tuned: bool,
                   flags: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """Table I style: one row per arm, test accuracy (:func:`row_accuracy`), its difference
    from the reference row and from the best row (points ± two standard errors, and the
    verdict), (tuned) the search each arm had, and (`flags` given) each row's flags."""
    ref = next((r for r in rows if r["label"] == reference), None)
    top = best_row(rows)
    multi = any(len(searches_of(r)) > 1 for r in rows)
    accs = {r["label"]: row_accuracy(r) for r in rows}
    best = max((a["mean"] for a in accs.values() if a), default=None)
    n = max(len(searches_of(r)) for r in rows) if rows else 1
    head = ["method", f"test acc % (winners of {n} study seeds: mean ± std)" if multi else "test acc % (mean ± std)",
            f"vs {reference} (points ± 2 SE)" if ref else "vs reference", "vs best (points ± 2 SE)", "seeds"]
    if tuned:
        head += ["trials", "epochs trained in search", "best val acc % (search)"]
        head += ["winners' test acc % by study seed"] if multi else []
    head += ["flags"] if flags is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res, acc = r.get("results"), accs[r["label"]]
        text = _pct(acc) if acc else "failed"
        if acc and best is not None and acc["mean"] == best:
            text = f"**{text}**"
        cells = [r["label"], text, "" if r is ref or ref is None else _verdict_cell(difference(r, ref)),
                 "" if r is top or top is None else _verdict_cell(difference(r, top)),
                 str(len(res["seeds"])) if res else "-"]
        if tuned:
            cells += _search_cells(r, multi)
        if flags is not None:
            cells.append("; ".join(reason for _, reason in flags.get(r["label"], [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def modality_table(rows: list[dict], reference: str | None) -> str:
    """Table III style: multimodal and per-modality test accuracy and the imbalance ratio
    (first / second modality, e.g. the paper's A/V ratio; strongest / weakest for three),
    each row's ratio next to the reference row's (before -> after)."""
    done = [r for r in rows if r.get("results")]
    if not done:
        return "(no finished runs)"
    mods = modalities_of(done[0]["results"])
    ref = next((r for r in done if r["label"] == reference), None)
    ratio_name = f"{mods[0][0].upper()}/{mods[1][0].upper()} ratio" if len(mods) == 2 else "max/min ratio"
    head = (["method", "multimodal %"] + [f"{u} %" for u in mods] + [ratio_name]
            + ([f"ratio {reference} → method"] if ref else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res = r.get("results")
        if not res:
            lines.append("| " + " | ".join([r["label"], "failed"] + ["-"] * (len(head) - 2)) + " |")
            continue
        s = res["summary"]
        cells = [r["label"], _pct(s["test_acc"])] + [_pct(s.get(f"test_acc_{u}")) for u in mods]
        cells.append(_ratio(s.get("test_imbalance_ratio")))
        if ref:
            before = ref["results"]["summary"].get("test_imbalance_ratio")
            after = s.get("test_imbalance_ratio")
            cells.append("" if r is ref else f"{_ratio(before).split(' ±')[0]} → {_ratio(after).split(' ±')[0]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fusion_table(rows: list[dict]) -> str:
    """Table II style: per fusion, test accuracy without and with BMLR and the gain."""
    by_label = {r["label"]: r for r in rows}
    fusions = [r["label"] for r in rows if not r["label"].endswith("+bmlr")]
    plain = next((by_label[f]["method"] for f in fusions), "uniform_baseline")
    head = ["fusion", f"without BMLR ({plain}) %", "with BMLR %", "gain (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fusions:
        a, b = by_label[f].get("results"), by_label.get(f"{f}+bmlr", {}).get("results")
        gain = _delta(b, a)
        if gain.startswith("+") and gain != "+0.00":
            gain = f"**{gain}**"
        lines.append("| " + " | ".join([f, _pct(a["summary"]["test_acc"]) if a else "failed",
                                        _pct(b["summary"]["test_acc"]) if b else "failed", gain]) + " |")
    return "\n".join(lines)


def ranking_line(rows: list[dict], flags: dict[str, list[tuple[str, str]]]) -> str:
    """The rows as groups that cannot be told apart (:func:`~bmlr.tuning.compare.verdict.groups`),
    best first, each row with its mean test accuracy and its flags' kinds."""
    accs = {r["label"]: row_accuracy(r) for r in rows}

    def shown(r: dict) -> str:
        kinds = ", ".join(dict.fromkeys(k for k, _ in flags.get(r["label"], [])))
        return f"{r['label']} ({100 * accs[r['label']]['mean']:.2f}" + (f"; flagged: {kinds})" if kinds else ")")
    ranked = groups([r for r in rows if accs[r["label"]]])
    return " > ".join(" ≈ ".join(shown(r) for r in group) for group in ranked)


def verdict_tags(rows: list[dict], settings: ComparisonSettings) -> dict[str, str]:
    """The verdicts as the comparison's MLflow run holds them: ``ranking`` (the grouped ranking),
    and per row ``verdict.<label>`` (the label as a slug; against the reference and the best row) and ``flags.<label>``."""
    flags = search_flags(rows, settings.samples) if settings.tune else {}
    ref = next((r for r in rows if r["label"] == settings.reference), None)
    top = best_row(rows)
    tags = {"ranking": ranking_line(rows, flags) or "no finished row"}
    for r in rows:
        parts = [f"vs {o['label']}: {_verdict_cell(difference(r, o))}" for o in (ref, top) if o is not None and o is not r]
        tags[f"verdict.{slug(r['label'])}"] = "; ".join(dict.fromkeys(parts)) or "-"
        if flags.get(r["label"]):
            tags[f"flags.{slug(r['label'])}"] = "; ".join(reason for _, reason in flags[r["label"]])
    return tags


def _ranking(rows: list[dict], flags: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The grouped ranking, and what each flag of the flagged rows means."""
    line = ranking_line(rows, flags)
    lines = [f"Ranking by mean test accuracy (≈: cannot be told apart, within two standard errors of the group's "
             f"first): {line}."] if line else []
    kinds = dict.fromkeys(k for r in rows for k, _ in flags.get(r["label"], []))
    if kinds:
        lines += [""] + [f"- flag *{k}*: {FLAG_NOTES[k]}." for k in kinds] + [""]
    return lines


def _how(settings: ComparisonSettings, rows: list[dict]) -> str:
    """How the rows were searched (tuned) or configured (untuned)."""
    if not settings.tune:
        return "untuned: each row trains the search space's fixed settings and defaults"
    n = settings.study_seeds
    crn = ("; the keys rows share drawn from common random numbers in TPE's start-up trials"
           if rows and all(r.get("crn") for r in rows) else "")
    seeds = (f"TPE seed {settings.seed}" if n == 1 else
             f"{n} searches, TPE seeds {settings.seed}..{settings.seed + n - 1}")
    most = settings.max_epochs or "the search space's"
    trials = (f"{settings.budget_text()} (" + ", ".join(
        f"{r['label']} {r['trials']}" for r in rows if "trials" in r) + ")") if settings.samples_per_key else \
        f"{settings.samples} trials"
    return (f"each row tuned with {trials} (ASHA: at most {most} "
            f"epochs, grace {settings.grace_period or 'of the search space, else measured'}, reduction {settings.reduction_factor}; {seeds}{crn}), "
            f"then the best configuration of each search trained with every seed")


def readings(rows: list[dict]) -> list[str]:
    """One line per row whose method reads an ambiguous source one way (`Method.reading`)."""
    lines = []
    for r in rows:
        method = METHODS.get(r["method"]) if r.get("method") in METHODS else None
        if method is not None and method.reading:
            lines.append(f"- *{r['label']}* (our reading; docs/comparisons.md): {method.reading}.")
    return [""] + lines if lines else []


def render_markdown(title: str, rows: list[dict], settings: ComparisonSettings, command: str,
                    notes: tuple[str, ...] = ()) -> str:
    """`comparison.md`: how the rows were trained, the command, the tables, the flags, the ranking."""
    reference = settings.reference
    tuned = settings.tune
    done = [r for r in rows if r.get("results")]
    seeds = sorted({len(r["results"]["seeds"]) for r in done})
    flags = search_flags(rows, settings.samples) if tuned else {}
    parts = [f"## {title}", "",
             f"Data set `{settings.dataset}`; {_how(settings, rows)}; test accuracy over "
             f"{'/'.join(map(str, seeds)) or '?'} seeds (mean ± sample std), epoch chosen on validation.", "",
             f"```bash\n{command}\n```", ""]
    if settings.layout == "fusions":
        parts += [fusion_table(rows), ""]
    parts += [accuracy_table(rows, reference, tuned, flags if tuned else None), ""]
    if any(len(searches_of(r)) > 1 for r in rows):
        parts += ["The per-modality table shows each row's first study seed's winner.", ""]
    parts += [modality_table(rows, reference), ""]
    parts += _ranking(rows, flags)
    verdict = verdict_lines(rows, reference)
    parts += ([""] if verdict and parts[-1] else []) + verdict
    parts += readings(rows)
    failed = [r["label"] for r in rows if not row_accuracy(r)]
    if failed:
        parts.append(f"No result for: {', '.join(failed)} (see the log of each).")
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts).rstrip() + "\n"
