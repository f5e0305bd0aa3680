"""The package's shape, checked from its source with `ast`: no import cycles (imports inside
functions count), no import of another module's `_private` names, no module over 450 lines
and no function over 80, and `bench/` importing only public names of `bmlr`.

Each checker is first run on a small package written here with the defect planted, so a
checker that stopped finding anything would fail its own test."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


# --- reading a package ---------------------------------------------------------------------
def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(name: str, path: Path, package: str):
    """(target module, imported name or None) for every import of `package` in the module,
    at any depth (inside functions too); relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == package:
                for alias in node.names:
                    yield target, alias.name


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from pkg import sub` counts as `pkg.sub`;
    importing a package's name counts as importing the package's __init__)."""
    mods = modules_of(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, item in imported_names(name, path, package_dir.name):
            sub = f"{target}.{item}" if item else target
            dep = sub if sub in mods else target
            while dep and dep not in mods:
                dep = dep.rpartition(".")[0]
            if dep and dep != name and not name.startswith(dep + "."):
                graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(package_dir: Path, importer_dir: Path | None = None) -> list[str]:
    """Imports of a `_private` name (or module) of the package from another module; with
    `importer_dir`, the importers are that folder's files (e.g. bench/) instead."""
    pkg = package_dir.name
    if importer_dir is None:
        importers = modules_of(package_dir)
    else:
        importers = {p.stem: p for p in sorted(importer_dir.rglob("*.py"))}
    bad = []
    for name, path in importers.items():
        for target, item in imported_names(name, path, pkg):
            private = [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
            if item and item.startswith("_") or private:
                bad.append(f"{name} imports {target}{'.' + item if item else ''}")
    return bad


def private_attributes(folder: Path) -> list[str]:
    """Uses of another object's `_private` attribute (`trainer._step`), not `self._x` or
    `cls._x` nor dunders, in the folder's files."""
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    return bad


def oversized(package_dir: Path, max_module: int, max_function: int) -> list[str]:
    bad = []
    for name, path in modules_of(package_dir).items():
        text = path.read_text()
        if len(text.splitlines()) > max_module:
            bad.append(f"module {name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_function:
                    bad.append(f"function {name}.{node.name}: {length} lines")
    return bad


def importers_of(package_dir: Path, library: str) -> list[str]:
    """The package's modules that import ``library`` (at any depth, inside functions too)."""
    found = []
    for name, path in modules_of(package_dir).items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == library for n in names):
                found.append(name)
                break
    return found


def callers_of(package_dir: Path, function: str) -> list[str]:
    """The package's modules that call ``function`` (by name or as an attribute)."""
    found = []
    for name, path in modules_of(package_dir).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and function in (getattr(node.func, "id", None),
                                                         getattr(node.func, "attr", None)):
                found.append(name)
                break
    return found


# --- the checkers find planted defects ---------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.sub import c  # hidden in a function\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import thing\nfrom pkg.d import _helper\n",
        "d.py": "def _helper():\n    pass\n" + "def long():\n" + "    x = 1\n" * 90,
        "e.py": "def f():\n    from mlflow.entities import Metric\n    return tracking.client_for(u)\n",
        "f.py": "import mlflow.tracking\nclient_for(u)\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "b1.py").write_text("from pkg._impl import x\nfrom pkg.d import _helper\nfrom pkg.a import ok\n"
                                 "ok._step(self._own, ok.__name__)\n")
    return pkg, bench


def test_checkers_find_planted_defects(planted):
    pkg, bench = planted
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert private_imports(pkg) == ["pkg.sub.c imports pkg.d._helper"]
    assert private_imports(pkg, bench) == ["b1 imports pkg._impl.x", "b1 imports pkg.d._helper"]
    assert private_attributes(bench) == ["b1.py:4 uses ._step"]
    assert oversized(pkg, 50, 80) == ["module pkg.d: 93 lines", "function pkg.d.long: 91 lines"]
    assert importers_of(pkg, "mlflow") == ["pkg.e", "pkg.f"]
    assert callers_of(pkg, "client_for") == ["pkg.e", "pkg.f"]


# --- the project -----------------------------------------------------------------------------
def test_no_import_cycles():
    assert cycles(import_graph(ROOT / "bmlr")) == []


def test_no_private_imports_across_modules():
    assert private_imports(ROOT / "bmlr") == []


def test_bench_imports_only_public_names():
    assert private_imports(ROOT / "bmlr", ROOT / "bench") == []
    assert private_attributes(ROOT / "bench") == []


def test_modules_and_functions_are_short():
    assert oversized(ROOT / "bmlr", MAX_MODULE_LINES, MAX_FUNCTION_LINES) == []


def test_one_owner_of_a_study_s_mlflow_runs():
    """MLflow is imported by the study-tracking package, production tracking (and its models'
    logging) and the store they share, nothing else; nothing else in bmlr/tuning opens an MLflow client."""
    tracking = [m for m in importers_of(ROOT / "bmlr", "mlflow") if not m.startswith("bmlr.tuning.tracking.")]
    assert tracking == ["bmlr.mlflow_store", "bmlr.model_logging", "bmlr.production_tracking"]
    clients = [m for m in callers_of(ROOT / "bmlr" / "tuning", "client_for") if not m.startswith("tuning.tracking")]
    assert clients == []


def test_the_score_rule_is_parsed_once_where_its_text_comes_in():
    """One grammar (`scores.parse_score`, the only place a ScoreRule is built from text), called
    once for each place the text comes in: the search-space file, the study's settings (--score,
    or study.json on a resume) and a trials-table row (`scores.rule_of`); the trainable, the
    results, the references and the report are handed the rule as an object."""
    tuning = ROOT / "bmlr" / "tuning"
    assert callers_of(tuning, "ScoreRule") == ["tuning.scores"]
    assert callers_of(tuning, "parse_score") == ["tuning.plan", "tuning.scores", "tuning.search_space_parse"]
    calls = [node for node in ast.walk(ast.parse((tuning / "plan.py").read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_score"]
    assert len(calls) == 1
