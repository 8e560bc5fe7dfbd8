"""The report as one self-contained HTML page: headline figures, the charts as inline SVG, every table.

The page fetches nothing when opened (no script, font, style sheet or image from anywhere: its
Content-Security-Policy forbids it), so it opens from an e-mail attachment as it does from
disk. Every value that came from the database is HTML-escaped, in the tables as in the
charts' SVG (matplotlib writes text as escaped XML).
"""

from __future__ import annotations

import html
import re
from typing import Any

from . import plot, report

#: No request may leave the page: inline styles and the SVGs' own data are all it uses.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .5em .9em; min-width: 9em; }
.card b { display: block; font-size: 1.45em; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em; }
figure { margin: 0; } figure svg { width: 100%; height: auto; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: .2em .6em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { text-align: left; background: #f4f4f4; position: sticky; top: 0; }
.scroll { max-height: 28em; overflow: auto; display: inline-block; }
"""
#: The headline: (label, figure, unit).
HEADLINE = (
    ("agent runs", "agent_runs", ""),
    ("tracked cells", "tracked_cells", ""),
    ("devices active in the period", "active_devices", ""),
    ("new devices", "new_devices", ""),
    ("cost", "cost", "USD"),
)
_PROLOGUE = re.compile(r"\A.*?(?=<svg)", re.S)


def _cell(value: Any) -> str:
    text = html.escape(report.text_cell(value))
    return f'<td class="n">{text}</td>' if isinstance(value, (int, float)) or value is None else f"<td>{text}</td>"


def _table(name: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return (
        f'<h2 id="table-{name}">{html.escape(name)}</h2><div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
    )


def page(data: dict) -> str:
    """The whole page as text."""
    latest = data["latest_day"]
    cards = [(label, data["cost_usd"]["total"] if key == "cost" else data[key], unit) for label, key, unit in HEADLINE]
    if latest.get("day"):
        cards[2:2] = [
            (f"daily active devices ({latest['day']})", latest["active_devices"], ""),
            ("weekly active devices", latest["weekly_active_devices"], ""),
            ("monthly active devices", latest["monthly_active_devices"], ""),
        ]
    card_html = "".join(
        f'<div class="card">{html.escape(label)}<b>{html.escape(report.text_cell(value))}'
        f"{' ' + unit if unit else ''}</b></div>"
        for label, value, unit in cards
    )
    charts = "".join(
        f'<figure id="chart-{name}">{_PROLOGUE.sub("", svg, count=1)}</figure>' for name, svg in plot.svgs(data).items()
    )
    tables = "".join(_table(name, header, rows) for name, (header, rows) in report.tables(data).items())
    title = html.escape(plot._title(data))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f'<section class="cards">{card_html}</section><h2>Charts</h2><section class="charts">{charts}</section>'
        f"{tables}</body></html>\n"
    )
