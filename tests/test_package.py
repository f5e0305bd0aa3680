"""The project installs as a package: the wheel carries the search spaces and configurations
(the checkout's top-level `search_spaces/` and `configs/`, mapped to `bmlr/search_spaces/` and
`bmlr/configs/` by pyproject.toml), and the installed console scripts tune, train and prepare
with no checkout in sight.

The slow test builds the wheel from the sources pyproject.toml names (copied, so the build
writes nothing into the checkout), installs it with `--no-deps` into a fresh virtual
environment that borrows this environment's installed dependencies (its site-packages
folders as plain path entries: their `.pth` files, the editable install of this checkout
among them, are not run), and from a folder outside the checkout runs a one-trial study with
`bmlr-tune` and trains its `best.yaml` with `bmlr-train`.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import setuptools

from bmlr.tuning import config_drift, search_space

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_every_package_of_bmlr_is_listed_and_the_data_folders_are_mapped():
    """pyproject.toml lists its packages (discovery cannot find the mapped ones): a new
    subpackage of bmlr/ must be added there, or the wheel would lack it."""
    listed = set(SETUPTOOLS["packages"])
    found = set(setuptools.find_packages(str(ROOT), include=["bmlr", "bmlr.*"]))
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    mapped = SETUPTOOLS["package-dir"]
    assert mapped == {"bmlr.search_spaces": "search_spaces", "bmlr.configs": "configs"}
    assert listed - found == set(mapped)
    for package, folder in mapped.items():
        assert sorted((ROOT / folder).glob("*.yaml")), folder
        assert SETUPTOOLS["package-data"][package] == ["*.yaml"]


def test_a_users_file_then_the_checkout_then_the_installed_copy(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "bmlr"
    (installed / "search_spaces").mkdir(parents=True)
    (installed / "configs").mkdir()
    (installed / "search_spaces" / "ave.yaml").write_text("search: {}\n")
    (installed / "configs" / "ave.yaml").write_text("dataset: ave\n")
    monkeypatch.setattr(search_space, "shipped_file", lambda folder, name: (
        installed / folder / name if (installed / folder / name).is_file() else None))
    monkeypatch.setattr(config_drift, "shipped_file", search_space.shipped_file)
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert search_space.resolve_search_space(None, "ave", cwd=cwd) == ROOT / "search_spaces" / "ave.yaml"
    monkeypatch.setattr(search_space, "project_root", lambda: tmp_path / "no-checkout")
    monkeypatch.setattr(config_drift, "project_root", search_space.project_root)
    assert search_space.resolve_search_space(None, "ave", cwd=cwd) == installed / "search_spaces" / "ave.yaml"
    assert search_space.resolve_search_space("search_spaces/ave.yaml", "x", cwd=cwd) == \
        installed / "search_spaces" / "ave.yaml"
    assert config_drift.dataset_config_path("ave") == installed / "configs" / "ave.yaml"
    assert config_drift.dataset_config_path("ave", root=cwd) is None  # an explicit root only
    (cwd / "search_spaces").mkdir()
    (cwd / "search_spaces" / "ave.yaml").write_text("search: {}\n")
    assert search_space.resolve_search_space(None, "ave", cwd=cwd) == cwd / "search_spaces" / "ave.yaml"
    with pytest.raises(search_space.SearchSpaceError, match="not found"):
        search_space.resolve_search_space(None, "ks", cwd=cwd)
    with pytest.raises(search_space.SearchSpaceError, match="not found"):
        search_space.resolve_search_space("other/ave.yaml", "ave", cwd=tmp_path)  # only search_spaces/<name>


# --- the wheel, installed --------------------------------------------------------------------
def build_wheel(tmp: Path) -> Path:
    """The wheel, built offline from a copy of what pyproject.toml names."""
    src = tmp / "src"
    src.mkdir()
    for name in ["pyproject.toml", "setup.cfg", PYPROJECT["project"]["readme"]]:
        shutil.copy2(ROOT / name, src / name)
    for folder in {"bmlr", *SETUPTOOLS["package-dir"].values()}:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "-w", str(tmp / "dist")], cwd=src)
    wheels = list((tmp / "dist").glob("bmlr_tune-*.whl"))
    assert len(wheels) == 1, out
    return wheels[0]


def fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, dict[str, str]]:
    """A virtual environment with the wheel installed (`--no-deps`) and this environment's
    site-packages folders appended to its path, and the environment variables to run it with."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         "--disable-pip-version-check", str(wheel)], cwd=tmp)
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=tmp).strip())
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (purelib / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours if os.path.isdir(p)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "BMLR_CACHE")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return venv, env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_the_installed_wheel_tunes_and_trains_outside_the_checkout(tmp_path):
    from bmlr.data.synthetic import generate

    wheel = build_wheel(tmp_path)
    venv, env = fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # outside the checkout, with no search_spaces/ or configs/ of its own
    work.mkdir()
    where = run([venv / "bin" / "python", "-c", "import bmlr, bmlr.tuning.search_space as s; print(bmlr.__file__); "
                 "print(s.resolve_search_space(None, 'synthetic'))"], cwd=work, env=env).splitlines()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), f"not the installed package: {where}"
    assert run([venv / "bin" / "bmlr-prepare", "--help"], cwd=work, env=env).startswith("usage:")

    data = generate(tmp_path / "data", seed=0, n_train_per_class=6, n_val_per_class=2, n_test_per_class=2,
                    image_size=32, n_frames=2)
    out = run([venv / "bin" / "bmlr-tune", "--samples", "1", "--max-epochs", "1", "--set", "model_width=4",
               "--set", "model_depth=1", "--set", "image_size=32", "--set", "frames=2", "--report", "none",
               "--no-references", "--storage", tmp_path / "runs", "--num-cpus", "2", "-v", "0", "--name", "pkg",
               "--data-root", data, "--set", f"cache_dir={tmp_path / 'cache'}"], cwd=work, env=env, timeout=600)
    assert "configs/synthetic.yaml" in out, out  # the installed configuration, compared in the banner
    best = tmp_path / "runs" / "synthetic" / "pkg" / "best.yaml"
    assert best.is_file(), out

    run([venv / "bin" / "bmlr-train", "--config", best, "--no-mlflow", "--set", "epochs=1", "--set", "seeds=[0]",
         "--set", f"output_dir={tmp_path / 'train'}"], cwd=work, env=env)
    assert len(list((tmp_path / "train").glob("*/results.json"))) == 1
