"""The one `bmlr-tune` parser (bmlr.tuning.cli): its subcommands, `run` as the default command,
every flag the commands had when each had a parser of its own, and `--help` without torch, Ray,
MLflow or Optuna. Cheap: no Ray start, no training (the handlers are replaced where one would run).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bmlr.tuning import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "export", "compare", "report", "surface", "recipe")
HEAVY = ("torch", "ray", "mlflow", "optuna")
COMPARISON_FLAGS = {
    "--dataset", "--data-root", "--search-space", "--set", "--samples", "--no-tune", "--max-epochs", "--grace-period",
    "--reduction-factor", "--seed", "--score", "--scheduler", "--confirm", "--confirm-seeds", "--max-failures",
    "--study-seeds", "--seeds", "--epochs", "--search-fusion", "--protocol", "--jobs", "--concurrent",
    "--cpus-per-trial", "--gpus-per-trial", "--address", "--num-cpus", "--connect-timeout", "--storage",
    "--tracking-uri", "--experiment", "--name", "--resume", "--reuse", "--reference", "-o", "--output", "-v",
    "--verbose"}
FLAGS = {  # every option of each command before the commands shared one parser
    "run": {"--dataset", "--data-root", "--search-space", "--method", "--set", "--samples", "--max-epochs",
            "--grace-period", "--reduction-factor", "--seed", "--score", "--scheduler", "--confirm", "--confirm-seeds",
            "--max-failures", "--concurrent", "--cpus-per-trial", "--gpus-per-trial", "--address", "--num-cpus",
            "--connect-timeout", "--storage", "--tracking-uri", "--experiment", "--name", "--resume", "--top", "-v",
            "--verbose", "--strategy", "--stage2-samples", "--stage1-alpha", "--references", "--no-references",
            "--report", "--baseline-study"},
    "export": {"--run-id", "-o", "--output", "--tracking-uri", "--storage", "--epochs", "--seeds", "--as-trained"},
    "report": {"--study", "--baseline-study", "--fast", "--top", "--no-mlflow"},
    "surface": {"--dataset", "--data-root", "--search-space", "--base", "--alphas", "--betas", "--grid-size",
                "--seeds", "--epochs", "--set", "--from-trials", "--bins", "--concurrent", "--cpus-per-trial",
                "--gpus-per-trial", "--address", "--num-cpus", "--connect-timeout", "--max-failures", "--storage",
                "--tracking-uri", "--experiment", "--name", "--resume", "--report", "-v", "--verbose"},
    "compare": COMPARISON_FLAGS | {"--methods"},
    "recipe": COMPARISON_FLAGS | {"--list"},
}


def _env() -> dict:
    path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=path)


def _flags(command: str) -> set[str]:
    """The option strings of `bmlr-tune COMMAND`, read from the parser that parses it."""
    seen = {}
    parser = cli.build_parser(command)
    for action in parser._actions:  # the subcommands' action holds one parser per command
        seen.update(getattr(action, "choices", None) or {})
    return {s for a in seen[command]._actions for s in a.option_strings} - {"-h", "--help"}


@pytest.fixture
def handled(monkeypatch):
    """Every command's handler replaced by one that records what it was given."""
    calls = []
    for name, (line, add_options, _handler) in list(cli.COMMANDS.items()):
        monkeypatch.setitem(cli.COMMANDS, name, (line, add_options, lambda args, argv: calls.append((args, argv)) or 0))
    return calls


def test_help_lists_the_six_subcommands(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands:")[1].splitlines()[2:] if line.strip()]
    assert listed == list(COMMANDS) == list(cli.COMMANDS)
    assert "bmlr-tune --samples 8` is `bmlr-tune run --samples 8" in " ".join(out.split())


def test_tune_py_help_imports_no_heavy_module():
    """`python tune.py --help`: the subcommands listed, and none of torch, Ray, MLflow, Optuna imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "tune.py"), "--help"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(f"    {name} " in proc.stdout for name in COMMANDS), proc.stdout
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command_is_kept(command):
    assert FLAGS[command] <= _flags(command), sorted(FLAGS[command] - _flags(command))


def test_a_bare_flag_list_is_the_run_command(handled):
    assert cli.main(["--samples", "4", "--max-epochs", "2", "--set", "epochs=3"]) == 0
    assert cli.main(["run", "--samples", "4", "--max-epochs", "2", "--set", "epochs=3"]) == 0
    assert cli.main([]) == 0  # `python tune.py`: a study with the defaults
    (bare, bare_argv), (named, named_argv), (default, _) = handled
    assert bare_argv == named_argv == ["run", "--samples", "4", "--max-epochs", "2", "--set", "epochs=3"]
    assert vars(bare) == vars(named)
    assert (bare.command, bare.samples, bare.max_epochs, bare.overrides) == ("run", 4, 2, ["epochs=3"])
    assert (default.command, default.samples, default.dataset, default.strategy) == ("run", 16, "synthetic", "joint")


def test_each_command_reaches_its_own_handler(handled):
    argvs = {"export": ["--run-id", "abc", "-o", "x.yaml"], "compare": ["--methods", "baseline", "--no-tune"],
             "report": ["--study", "somewhere"], "surface": ["--alphas", "1", "2"], "recipe": ["table3"]}
    for command, rest in argvs.items():
        assert cli.main([command, *rest]) == 0
        args, argv = handled[-1]
        assert args.command == command and argv == [command, *rest]
    assert handled[0][0].run_id == "abc" and handled[2][0].study == "somewhere" and handled[4][0].table == "table3"


def test_run_help_and_bad_input(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--samples", "4", "--help"])  # a bare flag list's help is run's
    assert exited.value.code == 0 and "--stage2-samples" in capsys.readouterr().out
    for argv in (["exprot", "--run-id", "x"], ["--no-such-flag"], ["export"], ["--samples", "many"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == cli.EXIT_ERROR, argv
    assert "invalid choice: 'exprot'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--samples", "1"], ["surface"], ["compare", "--no-tune"], ["recipe", "table1"]])
def test_an_unknown_dataset_is_one_error_line_after_parsing(argv, tmp_path, capsys):
    storage = tmp_path / "runs"
    assert cli.main([*argv, "--dataset", "nosuch", "--storage", str(storage)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --dataset nosuch") and "synthetic" in err and len(err.splitlines()) == 1, err
    assert not storage.exists()


def test_the_tuning_api_is_loaded_when_used():
    """`bmlr.tuning` keeps its public names, each imported from its module on first use."""
    import bmlr.tuning as tuning

    before = {"Arm", "Comparison", "ComparisonError", "ComparisonOutcome", "ComparisonSettings", "ExportError",
              "RECIPES", "Recipe", "ReportError", "SearchSpace", "SearchSpaceError", "StoreError", "StudyError",
              "StudyOutcome", "StudySettings", "StudyStore", "SurfaceError", "TrackingError", "choose_best",
              "export_run", "find_study", "get_recipe", "load_search_space", "parse_search_space", "plan_surface",
              "rank", "resolve_search_space", "run_staged", "run_study", "run_surface", "surface_from_study",
              "write_report"}
    assert before <= set(tuning.__all__) <= set(dir(tuning))
    assert all(getattr(tuning, name) is not None for name in tuning.__all__)
    from bmlr.tuning import compare, store  # submodules still import as before

    assert compare.Comparison is tuning.Comparison and store.StudyStore is tuning.StudyStore
    with pytest.raises(AttributeError):
        tuning.no_such_name
