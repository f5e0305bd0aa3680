"""The comparison's tables in Markdown, from the rows' `results.json` only: Table I style
(test accuracy), Table III style (per-modality accuracy and imbalance ratio), Table II style
(each fusion with and without BMLR), and the whole `comparison.md`."""
from __future__ import annotations

from bmlr.tuning.compare.settings import ComparisonSettings

__all__ = ["modalities_of", "accuracy_table", "modality_table", "fusion_table", "render_markdown"]


def modalities_of(results: dict) -> list[str]:
    """The modalities a run reports test accuracy of (`test_acc_<modality>`), in its order."""
    return [k[len("test_acc_"):] for k in results["summary"] if k.startswith("test_acc_")]


def _pct(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


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


def accuracy_table(rows: list[dict], reference: str | None, tuned: bool) -> str:
    """Table I style: one row per arm, test accuracy (mean ± std over seeds), the difference
    to the reference row, and (tuned) the search each arm had."""
    ref = next((r for r in rows if r["label"] == reference), None)
    best = max((r["results"]["summary"]["test_acc"]["mean"] for r in rows if r.get("results")), default=None)
    head = ["method", "test acc % (mean ± std)", f"Δ vs {reference} (points)" if ref else "Δ", "seeds"]
    if tuned:
        head += ["trials", "epochs trained in search", "best val acc % (search)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res = r.get("results")
        acc = _pct(res["summary"]["test_acc"]) if res else "failed"
        if res and best is not None and res["summary"]["test_acc"]["mean"] == best:
            acc = f"**{acc}**"
        cells = [r["label"], acc, "" if r is ref else _delta(res, ref and ref.get("results")),
                 str(len(res["seeds"])) if res else "-"]
        if tuned:
            val = r.get("best_val_acc")
            cells += [str(r.get("trials", "-")), str(r.get("epochs_searched", "-")),
                      f"{100 * val:.2f}" if isinstance(val, (int, float)) else "-"]
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


def render_markdown(title: str, rows: list[dict], settings: ComparisonSettings, command: str,
                    notes: tuple[str, ...] = ()) -> str:
    """`comparison.md`: how the rows were trained, the command, the tables, the ranking."""
    reference = settings.reference
    tuned = settings.tune
    done = [r for r in rows if r.get("results")]
    seeds = sorted({len(r["results"]["seeds"]) for r in done})
    how = (f"each row tuned with {settings.samples} trials (ASHA: at most {settings.max_epochs or 'the fixed'} "
           f"epochs, grace {settings.grace_period}, reduction {settings.reduction_factor}; TPE seed {settings.seed}), "
           f"then its best configuration trained with every seed" if tuned else
           "untuned: each row trains the search space's fixed settings and defaults")
    parts = [f"## {title}", "",
             f"Data set `{settings.dataset}`; {how}; test accuracy over {'/'.join(map(str, seeds)) or '?'} "
             f"seeds (mean ± sample std), epoch chosen on validation.", "", f"```bash\n{command}\n```", ""]
    if settings.layout == "fusions":
        parts += [fusion_table(rows), ""]
    parts += [accuracy_table(rows, reference, tuned), "", modality_table(rows, reference), ""]
    ranked = sorted(done, key=lambda r: -r["results"]["summary"]["test_acc"]["mean"])
    if ranked:
        parts.append("Ranking by mean test accuracy: " + " > ".join(
            f"{r['label']} ({100 * r['results']['summary']['test_acc']['mean']:.2f})" for r in ranked) + ".")
    failed = [r["label"] for r in rows if not r.get("results")]
    if failed:
        parts.append(f"No result for: {', '.join(failed)} (see the log of each).")
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts).rstrip() + "\n"
