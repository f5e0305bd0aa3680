"""`bmlr-tune compare` and `bmlr-tune recipe`: the command lines of a comparison.

    python tune.py compare --dataset cremad --data-root /data/CREMA-D \\
        --methods baseline uniform_baseline bmlr ogm_ge dgl aug udi --samples 32
    python tune.py compare --methods baseline bmlr ogm_ge --no-tune      # untuned defaults, all seeds
    python tune.py recipe table5 --dataset avmnist --data-root ../shared/data --no-tune
    python tune.py compare --resume --name compare-20250101-120000      # continue an interrupted one

`bmlr.tuning.cli` adds the two subcommands with :func:`add_compare_options` and
:func:`add_recipe_options` and calls :func:`compare_main` or :func:`recipe_main`; both import
what they run (and the constants the options name) when called, so `bmlr-tune --help` is quick.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bmlr.tuning.options import (add_asha_options, add_data_options, add_ray_options, add_result_options,
                                 add_set_option, add_verbose_option, check_dataset, check_ray_options, check_storage,
                                 settings_from)

if TYPE_CHECKING:
    from bmlr.tuning.compare.settings import ComparisonSettings
    from bmlr.tuning.recipes import Arm

__all__ = ["EXIT_ERROR", "EXIT_PARTIAL", "EXIT_INTERRUPTED", "add_compare_options", "add_recipe_options",
           "compare_rows", "recipe_rows", "comparison_settings", "compare_main", "recipe_main"]

EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 2, 1, 130


def add_comparison_options(p: argparse.ArgumentParser) -> None:
    """The options `compare` and `recipe` share: data, the budget of every row, resources, results."""
    from bmlr.tuning.compare.settings import PROTOCOLS  # (imports the study: only where compare or recipe parses)
    from bmlr.tuning.recipes import PAPER_FUSION

    g = p.add_argument_group("data and search space")
    add_data_options(g)
    add_set_option(g, "fix a configuration key for every row (repeatable; a searched key is then not searched); "
                   "method_args.<name>=V reaches only the methods that take <name>, e.g. "
                   "--set threads=1 --set model_width=8 --set method_args.anchor_epochs=4")
    g = p.add_argument_group("budget (the same for every row)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--samples", type=int, default=None, help="the same trials for every tuned row (default: "
                      "4 per key a row searches, at least 16, as measured in docs/comparisons.md; the table states "
                      "each row's)")
    mode.add_argument("--samples-per-key", type=int, metavar="K", help="trials per searched key instead: a row that "
                      "searches 4 keys gets 4K trials, one that searches lr alone K")
    mode.add_argument("--no-tune", action="store_true", help="no search: each row trains the untuned defaults (the "
                      "search space's fixed settings and each searched key's default: the paper's and the methods' "
                      "authors' values), not a protocol the paper describes")
    add_asha_options(g)
    g.add_argument("--study-seeds", type=int, default=1, metavar="N", help="studies per tuned row, each with its own "
                   "TPE seed (default 1)")
    g.add_argument("--seeds", type=int, nargs="+", help="production seeds of every row (default: the search "
                   "space's fixed seeds, [0, 1, 2] as in the paper)")
    g.add_argument("--epochs", type=int, help="production epochs (default: the search space's fixed epochs)")
    g = p.add_argument_group("how each row trains")
    g.add_argument("--search-fusion", action="store_true", help=f"search the fusion in every row that does not fix "
                   f"its own (default: {PAPER_FUSION}, as in the paper's Table I; a fusion searched per row "
                   f"confounds the method with the fusion)")
    g.add_argument("--protocol", dest="protocols", choices=PROTOCOLS, default="authors", help="each row's optimizer, "
                   "lr, momentum, weight decay and schedule: 'authors' (default): its method's public code's "
                   "(bmlr/methods/protocols.py; --set and the method's search-space section still win); 'shared': "
                   "the search space's shared settings for every row")
    g = p.add_argument_group("resources")
    g.add_argument("--jobs", type=int, default=1, help="production trainings at once (1: in this process, "
                   "more: `python -m bmlr.train` processes)")
    add_ray_options(g)
    g = p.add_argument_group("where results go")
    add_result_options(g, storage_help="results folder; the comparison lives in <storage>/<dataset>/<name>/, its "
                       "studies beside it",
                       name_help="comparison name (default: <compare|recipe>-<tuned|untuned>-<timestamp>)",
                       resume_help="continue the comparison --name (default: the latest of --dataset): finished "
                       "studies and production runs are kept")
    g.add_argument("--reuse", action="store_true", help="reuse finished production runs of identical "
                   "configurations from other comparisons in --storage (e.g. Table V's baseline and bmlr rows "
                   "from Table I's)")
    g.add_argument("--reference", help="the 'before' row of the tables (default: baseline, else the first row)")
    g.add_argument("-o", "--output", help="also write the Markdown tables to this file")
    add_verbose_option(g)


def add_compare_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Compare balancing methods with the same search budget: one study per method (the same trials, "
                     "ASHA budget and seed), each method's winner trained with every production seed, and Table I / "
                     "Table III-style tables in Markdown and MLflow. See docs/comparisons.md.")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare (default: baseline uniform_baseline ogm_ge dgl aug udi bmlr)")
    add_comparison_options(p)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    p.description = ("Run one of the paper's experiments (one table) on any supported data set, tuned (--samples N, "
                     "the same budget per row) or untuned (--no-tune). `--list` shows them.")
    p.add_argument("table", nargs="?", help="table1 ... table6 (`--list` shows each one's rows and what it leaves "
                   "out)")
    p.add_argument("--list", action="store_true", help="list the recipes and their rows")
    add_comparison_options(p)


@dataclass
class Rows:
    """What a command compares: its rows and how the tables present them."""

    arms: list[Arm]
    kind: str
    title: str
    reference: str | None
    notes: tuple[str, ...] = ()
    layout: str = "methods"


def recipe_rows(args: argparse.Namespace) -> Rows:
    """The rows of recipe `args.table` (KeyError: no such recipe; ComparisonError:
    `--search-fusion` on Table II, whose rows are the fusions)."""
    from bmlr.tuning.compare.settings import ComparisonError
    from bmlr.tuning.recipes import get_recipe, without_fusion

    recipe = get_recipe(args.table)
    arms = list(recipe.arms)
    if args.search_fusion:
        if recipe.layout == "fusions":
            raise ComparisonError(f"--search-fusion: recipe {recipe.name} compares the fusions, one per row")
        arms = [without_fusion(a) for a in arms]
    return Rows(arms, f"recipe {recipe.name}", recipe.title, args.reference or recipe.reference, recipe.notes,
                recipe.layout)


def compare_rows(args: argparse.Namespace) -> Rows:
    """One row per `--methods` entry (default: Table I's methods), each with concat fusion
    unless `--search-fusion`."""
    from bmlr.tuning.recipes import PAPER_FUSION, TABLE1_METHODS, method_arms

    title = "Equal-budget comparison" if not args.no_tune else "Comparison at the untuned defaults"
    fusion = None if args.search_fusion else PAPER_FUSION
    return Rows(list(method_arms(args.methods or TABLE1_METHODS, fusion)), "compare", title, args.reference)


def comparison_settings(args: argparse.Namespace, rows: Rows) -> ComparisonSettings:
    """The settings of the comparison the options ask for (a resumed one reads its own)."""
    from bmlr.train import parse_overrides
    from bmlr.tuning.compare.settings import ComparisonSettings
    from bmlr.tuning.search_space import resolve_search_space

    overrides = parse_overrides(args.overrides)
    search_space = "" if args.resume else str(resolve_search_space(args.search_space, args.dataset))
    arms = [{"label": a.label, "method": a.method, "fixed": a.fixed_dict} for a in rows.arms]
    return settings_from(ComparisonSettings, args, arms=arms, kind=rows.kind, search_space=search_space,
                         tune=not args.no_tune, overrides=overrides, reference=rows.reference, layout=rows.layout,
                         **budget(args))


def budget(args: argparse.Namespace) -> dict[str, int | None]:
    """The budget's settings: `--samples` for every row, `--samples-per-key`, else the measured
    default (TRIALS_PER_KEY per searched key, at least MIN_SAMPLES)."""
    from bmlr.tuning.compare.settings import MIN_SAMPLES, TRIALS_PER_KEY

    if args.samples or args.samples_per_key:
        return {"samples": args.samples or MIN_SAMPLES, "samples_per_key": args.samples_per_key, "min_samples": 1}
    return {"samples": MIN_SAMPLES, "samples_per_key": TRIALS_PER_KEY, "min_samples": MIN_SAMPLES}


def recipe_main(args: argparse.Namespace, argv: list[str]) -> int:
    """`recipe TABLE ...` (`--list`, or no table: the recipes)."""
    from bmlr.tuning.compare.settings import ComparisonError
    from bmlr.tuning.recipes import describe_recipes

    if args.list or not args.table:
        print(describe_recipes())
        return 0 if args.list else EXIT_ERROR
    try:
        rows = recipe_rows(args)
    except (KeyError, ComparisonError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return EXIT_ERROR
    return run_comparison(args, rows, argv)


def compare_main(args: argparse.Namespace, argv: list[str]) -> int:
    """`compare ...`: one row per method."""
    return run_comparison(args, compare_rows(args), argv)


def run_comparison(args: argparse.Namespace, rows: Rows, argv: list[str]) -> int:
    """Check, plan and run the comparison of `rows`; `argv` (from `compare` or `recipe` on) is recorded."""
    from bmlr.config import ConfigError
    from bmlr.fileio import atomic_write_text
    from bmlr.tuning.compare.runner import Comparison
    from bmlr.tuning.compare.settings import ComparisonError
    from bmlr.tuning.ray_backend import RayStartError
    from bmlr.tuning.search_space import SearchSpaceError
    from bmlr.tuning.store import StoreError
    from bmlr.tuning.study import StudyError

    shown = " ".join(["python", "tune.py", *argv])
    try:
        check_dataset(args.dataset)
        check_storage(args.storage, "compare")
        check_ray_options(args)
        comparison = Comparison(comparison_settings(args, rows), resume=args.resume, command=shown, title=rows.title,
                                notes=rows.notes)
        outcome = comparison.run(address=args.address, num_cpus=args.num_cpus, verbose=args.verbose)
    except (ComparisonError, SearchSpaceError, ConfigError, StudyError, StoreError, RayStartError) as err:
        # StudyError, StoreError, RayStartError: a row's study could not start
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.output:
        atomic_write_text(args.output, outcome.markdown)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if outcome.failed else 0
