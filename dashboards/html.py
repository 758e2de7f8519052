"""One self-contained HTML page (inline CSS, figures as base64 PNG data URIs) and Markdown copies of the tables."""

from __future__ import annotations

import base64
import html
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; } .note { color: #555; font-style: italic; }
nav a { margin-right: 1em; }
.table-wrap { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; white-space: nowrap; }
th { background: #f3f5f8; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.prose { white-space: normal; min-width: 18em; max-width: 30em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""
NUMERIC = ' class="num"'
PROSE = ' class="prose"'  # a long text (a run's departures from the paper) wraps instead of widening the table
PROSE_CHARS = 40


@dataclass
class Section:
    """A titled part of the report: an introduction, then tables, figures and notes in order."""

    anchor: str
    title: str
    intro: str = ""
    blocks: list[tuple[str, object, str]] = field(default_factory=list)  # (kind, content, caption)

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", frame, caption))

    def figure(self, png: Path, caption: str) -> None:
        self.blocks.append(("figure", png, caption))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text, ""))


def cell(value: object) -> str:
    """Blank for missing values, integers without decimals, other floats to 6 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
    return str(value)


def table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for value in values:
            numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
            text = cell(value)
            kind = NUMERIC if numeric else PROSE if len(text) > PROSE_CHARS else ""
            cells.append(f"<td{kind}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def table_markdown(frame: pd.DataFrame) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(escape(str(c)) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(escape(cell(v)) for v in values) + " |" for values in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    alt = html.escape(caption or png.stem)
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(title: str, meta: list[str], sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        body.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        if s.intro:
            body.append(f"<p>{html.escape(s.intro)}</p>")
        for kind, content, caption in s.blocks:
            if kind == "table":
                if caption:
                    body.append(f"<p><b>{html.escape(caption)}</b></p>")
                body.append(table_html(content))
            elif kind == "figure":
                body.append(figure_html(content, caption))
            else:
                body.append(f'<p class="note">{html.escape(str(content))}</p>')
    lines = "".join(f"<div>{html.escape(m)}</div>" for m in meta)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><div class=\"meta\">{lines}</div>"
            f"<nav>{nav}</nav>{''.join(body)}</body></html>\n")
