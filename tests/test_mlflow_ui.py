"""What a user sees in the MLflow UI after a study: a real `mlflow ui` on loopback over the
finished tiny study (tests/conftest.py `finished_study`), loaded in Debian's headless Chromium
at the runs-table link the study's summary printed; and the live dashboard the study's banner
names (`optuna-dashboard` over the study's Optuna journal), in the same browser.

Skips, with the reason, where Chromium is absent (`apt-get install chromium`). With
``BMLR_SCREENSHOT_DIR`` set, the screenshot is also saved there (docs/img/ is made that way).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from process_helpers import stop_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless, and no background connections (this machine's network is closed: they would fail)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1900,800", "--virtual-time-budget=30000"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                       "(apt-get install chromium); the browser test needs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow ui exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.read(2) == b"OK":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow ui did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def mlflow_ui(finished_study, tmp_path_factory):
    """``mlflow ui`` on a free loopback port over the study's store; its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    mlflow = Path(sys.executable).parent / "mlflow"
    with log.open("w") as out:
        proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", finished_study["uri"], "--host",
                                 "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def _printed_link(out: str, what: str, port_base: str) -> str:
    """The link the study's summary printed after ``what:``, on the test's port."""
    match = re.search(rf"^\s*{what}: (http://127\.0\.0\.1:5000/\S+)$", out, re.M)
    assert match, f"the summary printed no {what} link:\n{out}"
    return match.group(1).replace("http://127.0.0.1:5000", port_base)


def _render(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``), or a screenshot of it."""
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *what, url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _trial_runs(finished_study) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=finished_study["uri"])
    return client.search_runs([finished_study["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{finished_study['parent_run_id']}'")


def test_the_printed_runs_table_link_shows_the_trials_by_name_best_first(finished_study, mlflow_ui, tmp_path):
    link = _printed_link(finished_study["out"], "runs table", mlflow_ui)
    assert "workflowType=machine_learning" in link and "viewStateShareKey=" in link
    dom = _render(link, tmp_path / "profile")
    runs = _trial_runs(finished_study)
    names = [r.info.run_name for r in runs]
    assert len(names) == 6 and sum(n.startswith("★ ") for n in names) == 1, names
    text = re.sub(r"<[^>]+>", "\n", dom)
    shown = [line.strip() for line in text.splitlines() if line.strip() in names]
    # every trial, by its sampled-value name, the best score first: the view sorts by the score; the
    # winner (starred) has that score (a tie on the small validation split may put an equal one first)
    assert sorted(shown) == sorted(names), (shown, names)
    scores = {r.info.run_name: r.data.metrics["score"] for r in runs}
    starred = next(n for n in names if n.startswith("★ "))
    assert scores[shown[0]] == scores[starred] == max(scores.values()), (shown, scores)
    assert re.fullmatch(r"★ b=\S+ a=\S+ lr=\S+ (concat|sum)", starred)
    assert finished_study["parent_run_id"] not in shown and "tiny" not in shown  # the parent is not a row
    # the classic runs table (not the GenAI overview), with the score and the sampled keys as columns
    for header in ("score", "beta", "alpha", "lr", "fusion", "trial_status"):
        assert re.search(rf">\s*{header}\s*<", dom), header
    shot = tmp_path / "mlflow-runs-table.png"
    _render(link, tmp_path / "profile", screenshot=shot)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("BMLR_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["BMLR_SCREENSHOT_DIR"]) / shot.name)


def test_the_printed_parent_run_link_opens_the_study_run(finished_study, mlflow_ui, tmp_path):
    link = _printed_link(finished_study["out"], "parent run", mlflow_ui)
    assert link.endswith(f"/runs/{finished_study['parent_run_id']}?workflowType=machine_learning")
    dom = _render(link, tmp_path / "profile")
    assert re.search(r">\s*tiny\s*<", dom)  # the parent run, named after the study


def test_the_printed_optuna_dashboard_shows_the_study_and_every_trial(finished_study, tmp_path):
    """The banner's `live: optuna-dashboard FILE`: a real optuna-dashboard on a free loopback port
    over that file shows the study by its name and its 6 trials, each complete."""
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    if not dashboard.is_file():
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard; the test extra has it)")
    match = re.search(r"^\s*live: optuna-dashboard (\S+)", finished_study["out"], re.M)
    assert match, finished_study["out"][:3000]
    journal = Path(match.group(1))
    assert journal == finished_study["dir"] / "optuna.journal" and journal.is_file()
    port = _free_port()
    with (tmp_path / "dashboard.log").open("w") as out:
        proc = subprocess.Popen([str(dashboard), str(journal), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_answering(f"http://127.0.0.1:{port}/api/studies", proc)
        dom = _render(f"http://127.0.0.1:{port}/dashboard/studies/0/trials", tmp_path / "profile")
    finally:
        stop_process(proc)
    text = [line.strip() for line in re.sub(r"<style.*?</style>|<[^>]+>", "\n", dom, flags=re.S).splitlines()]
    assert "tiny (id=0)" in text and "6 Trials" in text, [t for t in text if t][:40]
    assert {f"Trial {k}" for k in range(6)} <= set(text) and "Complete" in text


def _wait_answering(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered at {url} within {timeout} s")
