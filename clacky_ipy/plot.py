"""The report's charts, drawn with matplotlib (the ``plot`` extra): one PNG figure, or one SVG each.

`CHARTS` names each chart and the function that draws it into one axes; `png` draws them all
into one figure (``report --plot``), `svgs` draws each into its own static SVG for the HTML
page (text kept as text, no font or script fetched). Daily series are drawn as lines and
areas, never as bars a pixel wide, so long spans show no gaps that are not there; colours
are the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), which stays
distinguishable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from . import reach, safe

#: Okabe-Ito, in its published order (black last: kept for "other").
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
#: Series per chart at most; the rest is summed as "other".
TOP = 6
#: The longest label drawn (a longer received name is cut, with an ellipsis; the tables show it whole).
LABEL = 32
#: The last cohorts the heat map shows.
COHORTS_SHOWN = 12


def _label(text: Any) -> str:
    """Received text as a matplotlib label: escaped, with no mathtext ($) and never hidden (_)."""
    text = safe.printable(str(text))
    text = (text[: LABEL - 1] + "\u2026" if len(text) > LABEL else text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _day(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d")


def _thousands(ax: Any, axis: str = "y", money: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter

    def text(v: float, _: Any) -> str:
        if money:
            return f"${v:,.2f}" if abs(v) < 10 else f"${v:,.0f}"
        return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:,.2g}"

    fmt = FuncFormatter(text)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _dates(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("day (UTC)")


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data in this period", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _top(series: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """The `TOP` biggest series, the rest summed as ``other``."""
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    out = ranked[:TOP]
    if len(ranked) > TOP:
        other: dict[str, float] = {}
        for _, values in ranked[TOP:]:
            for day, v in values.items():
                other[day] = other.get(day, 0) + v
        out.append(("other", other))
    return out


#: Past this many days a daily series is drawn per week, past `MONTHS_FROM` per month: a chart
#: about 700 pixels wide then shows each period as a few pixels, never a day as a fraction of one.
WEEKS_FROM = 180
MONTHS_FROM = 3 * 365


def binned(days: list[str], series: list[tuple[str, dict[str, float]]]) -> tuple[str, list[str], list]:
    """The series summed per day, week (its Monday) or month (its first day), by the span."""
    span = (_day(days[-1]) - _day(days[0])).days + 1 if days else 0
    if span <= WEEKS_FROM:
        return "day", days, series

    def period(day: str) -> str:
        if span > MONTHS_FROM:
            return day[:8] + "01"
        return reach.iso(reach.monday(_day(day).toordinal()))

    periods = sorted({period(d) for d in days})
    out = []
    for name, values in series:
        summed: dict[str, float] = {}
        for day, v in values.items():
            summed[period(day)] = summed.get(period(day), 0) + v
        out.append((name, summed))
    return ("week" if span <= MONTHS_FROM else "month"), periods, out


def _stacked(ax: Any, days: list[str], series: list[tuple[str, dict[str, float]]], per: str | None = None) -> str:
    """Stacked areas of `series` over `days` (binned to weeks or months on long spans): the period drawn."""
    if per is None:
        per, days, series = binned(days, series)
    x = [_day(d) for d in days]
    ys = [[values.get(d, 0) for d in days] for _, values in series]
    colours = [OKABE_ITO[i % (len(OKABE_ITO) - 1)] if name != "other" else OKABE_ITO[-1]
               for i, (name, _) in enumerate(series)]  # fmt: skip
    ax.stackplot(x, ys, labels=[_label(name) for name, _ in series], colors=colours, step="post", linewidth=0)
    ax.legend(loc="upper left", fontsize="small", ncol=min(3, len(series)), frameon=False)
    ax.set_ylim(0, max(1, max(map(sum, zip(*ys)), default=0)) * 1.25)  # room for the legend
    ax.margins(x=0)
    _dates(ax)
    ax.set_xlabel(f"{per} (UTC)" if per != "week" else "week (UTC, from Monday)")
    return per


def devices(ax: Any, report: dict) -> None:
    title = "Active devices: daily, weekly (7 days), monthly (30 days)"
    daily = report["daily"]
    if not daily:
        return _empty(ax, title)
    x = [_day(r["day"]) for r in daily]
    for key, name, colour in (
        ("active_devices", "daily", OKABE_ITO[4]),
        ("weekly_active_devices", "weekly", OKABE_ITO[0]),
        ("monthly_active_devices", "monthly", OKABE_ITO[2]),
    ):
        ax.plot(x, [r[key] for r in daily], label=name, color=colour, linewidth=1.5)
    ax.set_title(title)
    ax.set_ylabel("devices")
    ax.set_ylim(bottom=0)
    ax.margins(x=0)
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    _thousands(ax)
    _dates(ax)
    return None


def runs(ax: Any, report: dict) -> None:
    title = "Agent runs per day, by status"
    daily = report["daily"]
    if not report["agent_runs"]:
        return _empty(ax, title)
    series: dict[str, dict[str, float]] = {}
    for row in daily:
        for status, n in row["agent_runs_by_status"].items():
            series.setdefault(status, {})[row["day"]] = n
    per = _stacked(ax, [r["day"] for r in daily], _top(series))
    ax.set_title(title if per == "day" else title.replace("per day", f"per {per}"))
    ax.set_ylabel(f"agent runs per {per}")
    _thousands(ax)
    return None


def cost(ax: Any, report: dict) -> None:
    title = "Cost per day by model (agent runs, USD)"
    series: dict[str, dict[str, float]] = {}
    for row in report["daily_models"]:
        if row["cost_usd"]:
            series.setdefault(row["model"], {})[row["day"]] = row["cost_usd"]
    if not series:
        return _empty(ax, title)
    per = _stacked(ax, [r["day"] for r in report["daily"]], _top(series))
    ax.set_title(title if per == "day" else title.replace("per day", f"per {per}"))
    ax.set_ylabel(f"USD per {per}")
    _thousands(ax, money=True)
    return None


def durations(ax: Any, report: dict) -> None:
    title = "Agent run duration by model: p50 and p95 (seconds)"
    models = [m for m in report["models"] if m["p50_ms"] is not None][: TOP * 2]
    if not models:
        return _empty(ax, title)
    names = [_label(m["model"]) for m in models][::-1]
    p50 = [m["p50_ms"] / 1000 for m in models][::-1]
    p95 = [m["p95_ms"] / 1000 for m in models][::-1]
    y = range(len(models))
    ax.barh([i + 0.2 for i in y], p95, height=0.4, color=OKABE_ITO[5], label="p95")
    ax.barh([i - 0.2 for i in y], p50, height=0.4, color=OKABE_ITO[4], label="p50")
    ax.set_yticks(list(y), names, fontsize="small")
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    _thousands(ax, "x")
    return None


def versions(ax: Any, report: dict) -> None:
    title = "Version adoption: share of startups per week"
    weekly: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for row in report["daily_versions"]:
        week = reach.iso(reach.monday(_day(row["day"]).toordinal()))
        weekly.setdefault(row["version"], {})[week] = weekly.get(row["version"], {}).get(week, 0) + row["startups"]
        totals[week] = totals.get(week, 0) + row["startups"]
    if not totals:
        return _empty(ax, title)
    weeks = sorted(totals)
    share = {v: {w: 100 * n / totals[w] for w, n in got.items()} for v, got in weekly.items()}
    _stacked(ax, weeks, _top(share), per="week")
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.set_ylabel("% of startups")
    return None


def retention(ax: Any, report: dict) -> None:
    title = "Weekly retention: share of each week's new devices seen again"
    cohorts = report["cohorts"][-COHORTS_SHOWN:]
    if not cohorts:
        return _empty(ax, title)
    import numpy as np

    grid = np.array([[np.nan if s is None else 100 * s for s in c["share"]] for c in cohorts], dtype=float)
    image = ax.imshow(grid, cmap="cividis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(reach.COHORT_WEEKS), [f"W+{k}" for k in range(1, reach.COHORT_WEEKS + 1)])
    ax.set_yticks(range(len(cohorts)), [f"{c['week']} ({c['devices']:,})" for c in cohorts], fontsize="small")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.0f}%", ha="center", va="center", fontsize="x-small",
                        color="white" if value < 50 else "black")  # fmt: skip
    ax.set_xlabel("weeks after the first")
    ax.set_ylabel("first seen (week, devices)")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="% of the cohort")
    return None


#: Each chart: its id and the function that draws it into one axes.
CHARTS: dict[str, Callable[[Any, dict], None]] = {
    "devices": devices,
    "runs": runs,
    "cost": cost,
    "durations": durations,
    "versions": versions,
    "retention": retention,
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(report: dict, path: str | Path) -> None:
    """Every chart in one figure (``report --plot``: .png, .svg or .pdf by the suffix)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(15, 13), dpi=100)
    for ax, draw in zip(axes.flat, CHARTS.values()):
        draw(ax, report)
    fig.suptitle(_title(report), fontsize=13, weight="bold")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def svgs(report: dict) -> dict[str, str]:
    """Each chart as one static SVG document (text as text; ids unique per chart)."""
    plt = _pyplot()
    out = {}
    for name, draw in CHARTS.items():
        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"clacky-{name}"}):
            fig, ax = plt.subplots(figsize=(7.5, 4), dpi=100)
            draw(ax, report)
            fig.tight_layout()
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None})
            plt.close(fig)
        out[name] = buffer.getvalue()
    return out


def _title(report: dict) -> str:
    filters = report["filters"]
    title = "clacky-ipy telemetry" + (f", last {filters['days']} days" if filters.get("days") else "")
    return title + (" (CI excluded)" if filters.get("exclude_ci") else "")
