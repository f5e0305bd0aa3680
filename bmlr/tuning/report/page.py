"""The report page: a list of blocks (headings, paragraphs, tables, images) rendered once as
Markdown and once as a self-contained HTML file (images inlined as base64), and the cell
formatters every section's tables share."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from bmlr.fileio import atomic_write_text, finite_or_none

__all__ = ["Page", "pct", "val", "count"]

STYLE = ("<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #bbb;"
         "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%;display:block;"
         "margin:1em 0;border:1px solid #ddd}code{background:#f3f3f3;padding:0 3px}</style>")


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("-" where there is no number)."""
    v = finite_or_none(value)
    return "-" if v is None else f"{100 * v:.{digits}f}"


def val(value: Any) -> str:
    """A table cell: floats to 4 significant digits, "-" for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def count(value: Any) -> int | None:
    """A logged count (Ray stores numbers as floats) as an integer, None where there is none."""
    v = finite_or_none(value)
    return None if v is None else int(round(v))


def _inline(text: str) -> str:
    """The page's two Markdown marks in HTML: `code` and **bold**."""
    text = html.escape(text)
    parts = text.split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


class Page:
    """A list of blocks rendered as Markdown and as self-contained HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", head, rows))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", Path(path), alt))

    def images(self) -> list[Path]:
        return [b[1] for b in self.blocks if b[0] == "img"]

    def markdown(self, base: Path) -> str:
        """The page as Markdown; images are linked relative to `base` (the report folder; Optuna's
        figures beside it as `../optuna/<name>.png`, the same layout as the MLflow run's artifacts)."""
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in b[2]]
            elif b[0] == "img":
                out.append(f"![{b[2]}]({Path(os.path.relpath(b[1], base)).as_posix()})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        """The page as one HTML file that needs nothing beside it (images inlined)."""
        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               STYLE + "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{_inline(str(h))}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(b[1].read_bytes()).decode()
                out.append(f"<img alt='{html.escape(b[2])}' title='{html.escape(b[2])}' "
                           f"src='data:image/png;base64,{data}'>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, out_dir: Path, title: str) -> Path:
        """`out_dir/report.md` and `out_dir/report.html`, each written whole; returns the .md path."""
        md_path = atomic_write_text(out_dir / "report.md", self.markdown(out_dir))
        atomic_write_text(out_dir / "report.html", self.html(title))
        return md_path
