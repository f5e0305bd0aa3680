"""Files written whole or not at all, and the small formats the toolkit keeps (JSON, CSV).

Every file another process may read while it is being written (the study folder, the data
cache, run results, figures) goes through :func:`atomic_path`: the content is written to a
temporary name beside the target and moved into place with ``os.replace``, so a reader sees
the old file or the new one, never half of one, and a killed writer leaves only a
``.<name>.tmp-<pid>-<random>`` file that no reader looks at.

This module is a leaf: it imports nothing from ``bmlr``.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["TMP_MARK", "abs_path", "timestamp", "tmp_path_for", "atomic_path", "atomic_write_text",
           "write_json", "read_json", "write_csv", "read_csv", "parse_cell", "finite_or_none", "atomic_torch_save",
           "WRITE_FAILURES", "write_failure", "write_failure_line"]

TMP_MARK = ".tmp-"  # in every temporary name: a cache scan can skip (and later remove) leftovers


def abs_path(path: str | os.PathLike) -> Path:
    """``~`` expanded, made absolute, links resolved."""
    return Path(os.path.expanduser(str(path))).resolve()


def timestamp() -> str:
    """Local time as ``YYYYmmdd-HHMMSS`` (default study names)."""
    return time.strftime("%Y%m%d-%H%M%S")


def tmp_path_for(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any exception
    (Ctrl-C included) it is removed and the exception goes on. The parent folder is created.

        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON, indented, atomically; values JSON lacks (paths, numpy scalars) written as strings."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """A CSV with the union of the rows' keys as columns (in first-seen order); None as an
    empty cell. Atomic."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    return Path(path)


def read_csv(path: str | os.PathLike, text_columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A CSV written by :func:`write_csv`, each cell typed back by :func:`parse_cell` except
    the ``text_columns`` (identifiers that only look like numbers), kept as strings."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k in text_columns else parse_cell(v)) for k, v in row.items()} for row in rows]


def parse_cell(value: Any) -> Any:
    """A CSV cell as the value it was written from: "" -> None, "True"/"False" -> bool,
    integers -> int, other numbers -> float (nan and inf too), anything else unchanged."""
    if not isinstance(value, str):
        return value
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        number = float(value)
    except ValueError:
        return value
    if number.is_integer() and value.lstrip("+-").isdigit():
        return int(value)
    return number


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, nan, inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_path`), synced to disk
    before the rename (a power loss leaves the old file or the new one). Serialized in memory
    first and written by Python, so a full disk raises ``OSError`` (``errno.ENOSPC``): torch's
    own writer turns it into a ``RuntimeError`` ("unexpected pos"), even given a file object.
    The half-written temporary file is removed."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# what a failed write means, and what to do: (problem, remedy) by errno
WRITE_FAILURES = {errno.ENOSPC: ("no space left on device", "free space and run again"),
                  errno.EDQUOT: ("disk quota exceeded", "free space (or raise the quota) and run again"),
                  errno.EROFS: ("read-only file system", "choose a writable folder and run again"),
                  errno.EACCES: ("permission denied", "choose a writable folder and run again")}


def write_failure(err: OSError) -> int | None:
    """The :data:`WRITE_FAILURES` code of ``err``, or None: its errno, or ENOSPC for NumPy's
    short write on a full disk (``OSError("N requested and M written")``, no errno)."""
    if err.errno in WRITE_FAILURES:
        return err.errno
    text = str(err)
    return errno.ENOSPC if err.errno is None and "requested and" in text and "written" in text else None


def write_failure_line(err: OSError, where: str) -> str | None:
    """``"no space left on device writing <where>; free space and run again"`` where ``err`` is
    one of the :data:`WRITE_FAILURES`, else None."""
    code = write_failure(err)
    if code is None:
        return None
    problem, todo = WRITE_FAILURES[code]
    return f"{problem} writing {where}; {todo}"
