"""Builds ``runs/report.md`` and ``runs/report.html`` from the ``result.json`` files under ``runs/``.

Every number in the report is read from a result file; nothing is typed here. Verdicts are recomputed
from the stored measurements when a file is loaded (``Result.from_json``), so the report, ``honed
list`` and ``honed run`` always agree.
"""
import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.core.atomic import atomic_write_text
from honed.core.errors import CorruptFileError
from honed.core.experiment import SMOKE_REASON, Result, status_text
from honed.core.evidence import VERDICTS
from honed.core.store import read_checked_json

VERDICT_LABEL = {"holds": "holds", "fails": "FAILS", "inconclusive": "inconclusive"}


@dataclass
class RunEntry:
    """One experiment's newest run folder: its Result (and the file it came from), or why there is none
    (interrupted, corrupt)."""

    id: str
    folder: Path
    result: Result | None
    problem: str = ""
    file: Path | None = None

    @property
    def plot(self) -> Path | None:
        """The plot beside the result file, if it exists."""
        if self.file is None:
            return None
        png = self.folder / ("plot" + self.file.name[len("result"):-len(".json")] + ".png")
        return png if png.exists() else None


def load_result(file: Path) -> tuple[Result | None, str]:
    """``(Result, "")`` for a readable result file, else ``(None, one-line reason)``."""
    try:
        data = read_checked_json(file)
    except (OSError, CorruptFileError) as err:
        return None, f"corrupt {file.name} ({err.__class__.__name__}); rerun to re-aggregate it"
    if not isinstance(data, dict) or "id" not in data:
        return None, "result.json is not a honed result; rerun with --force"
    try:
        return Result.from_json(data), ""
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return None, f"result.json lacks fields ({err.__class__.__name__}: {err}); rerun with --force"


def folder_state(folder: Path) -> RunEntry:
    """What a run folder holds: a finished result, a corrupt one, or an interrupted run."""
    exp_id = folder.parent.name
    files = sorted(folder.glob("result*.json"), key=lambda f: f.stat().st_mtime)
    if files:
        result, problem = load_result(files[-1])
        return RunEntry(result.id if result else exp_id, folder, result, problem, files[-1])
    seeds = len(list(folder.glob("seed_*/seed_result.json")))
    return RunEntry(exp_id, folder, None, f"interrupted ({seeds} seed(s) finished)")


def find_runs(root: Path) -> dict[str, RunEntry]:
    """The newest run folder per experiment id under ``root`` (``root/ID/HASH/``): finished results
    first; an interrupted or corrupt folder is reported only when the experiment has no finished one."""
    best: dict[str, tuple[tuple[int, float], RunEntry]] = {}
    for folder in sorted(Path(root).glob("*/*/")):
        if not folder.is_dir() or not (folder / "config.json").exists() and not list(folder.glob("result*.json")):
            continue
        entry = folder_state(folder)
        rank = (entry.result is not None, folder.stat().st_mtime)
        if entry.id not in best or rank > best[entry.id][0]:
            best[entry.id] = (rank, entry)
    return {k: v[1] for k, v in sorted(best.items())}


def find_results(root: Path) -> dict[str, tuple[Result, Path]]:
    """The newest finished result per experiment id under ``root``."""
    return {k: (e.result, e.folder) for k, e in find_runs(root).items() if e.result is not None}


def fmt(value: Any) -> str:
    """A number as the report prints it (4 significant digits, scientific when tiny or huge)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def fmt_interval(interval: Any) -> str:
    return "none" if not interval else f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def stat(s: dict) -> str:
    """``mean ± std`` of a metric summary (std shown only for several seeds)."""
    return fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if len(s.get("values", [])) > 1 else "")


def arms_table(result: Result) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the arms table: one row per arm, its role, then every metric."""
    metrics: list[str] = []
    for by_metric in result.arms.values():
        metrics += [m for m in by_metric if m not in metrics]
    rows = []
    for arm, by_metric in result.arms.items():
        role = "ours" if result.is_method_arm(arm) else "baseline"
        rows.append([arm, role] + [stat(by_metric[m]) if m in by_metric else "-" for m in metrics])
    return ["arm", "role"] + metrics, rows


def metrics_by_arm(result: Result) -> tuple[list[str], list[list[str]]]:
    """The arms table turned on its side (one row per metric, one column per arm, roles in the
    header): readable when an experiment records many metrics per arm."""
    header, rows = arms_table(result)
    columns = ["metric"] + [f"{r[0]} ({r[1]})" for r in rows]
    return columns, [[metric] + [r[i] for r in rows] for i, metric in enumerate(header[2:], start=2)]


def readable_arms_table(result: Result, max_columns: int = 10) -> tuple[list[str], list[list[str]]]:
    """``arms_table`` or, when it would have more than ``max_columns`` columns and fewer arms than
    metrics, :func:`metrics_by_arm`."""
    header, rows = arms_table(result)
    if len(header) > max_columns and len(rows) < len(header) - 2:
        return metrics_by_arm(result)
    return header, rows


CLAIMS_HEADER = ["claim", "paper", "ours", "95% interval", "target", "verdict", "why"]


def claims_table(result: Result) -> tuple[list[str], list[list[str]]]:
    """Per claim: name, paper's figure, our value, its interval, the target, the verdict and why."""
    rows = [[c.name, c.paper, fmt(c.measured), fmt_interval(c.interval), f"{c.comparison} {fmt(c.threshold)}",
             VERDICT_LABEL[c.verdict], c.reason] for c in result.claims]
    return CLAIMS_HEADER, rows


def preconditions_table(result: Result) -> tuple[list[str], list[list[str]]]:
    rows = [[p.name, p.paper, fmt(p.measured), fmt_interval(p.interval), f"{p.comparison} {fmt(p.threshold)}",
             VERDICT_LABEL[p.verdict], p.reason] for p in result.preconditions]
    return ["precondition", "why it is needed", "measured", "95% interval", "target", "verdict", "why"], rows


def invariants_table(result: Result) -> tuple[list[str], list[list[str]]]:
    rows = [[i.name, i.description, fmt(i.measured), f"{i.comparison} {fmt(i.threshold)}",
             "ok" if i.holds else "BROKEN"] for i in result.invariants]
    return ["invariant (by construction)", "what it checks", "measured", "target", "state"], rows


def interval_methods(result: Result) -> list[str]:
    """The distinct ways this result's intervals were computed (for a footnote)."""
    seen: list[str] = []
    for check in [*result.claims, *result.preconditions]:
        if check.interval_method not in seen and check.interval_method != "none":
            seen.append(check.interval_method)
    return seen


def totals(results: list[Result]) -> dict[str, int]:
    """Verdict counts over every result (claims only), plus invariants checked and broken."""
    counts = {v: sum(r.verdicts[v] for r in results) for v in VERDICTS}
    counts["invariants"] = sum(len(r.invariants) for r in results)
    counts["broken"] = sum(not i.holds for r in results for i in r.invariants)
    return counts


def totals_line(results: list[Result]) -> str:
    """``"Over 3 experiments: 5 hold, 2 fail, 9 inconclusive (11 invariants, 0 broken)."``"""
    t = totals(results)
    return (f"Over {len(results)} experiment(s): {status_text(t)} (claims); "
            f"{t['invariants']} invariant(s) checked, {t['broken']} broken.")


SUMMARY_HEADER = ["id", "method", "preset", "seeds", "hold", "fail", "inconclusive", "preconditions held", "runtime (s)"]


def summary_rows(entries: dict[str, RunEntry]) -> list[list[str]]:
    """One row per experiment: verdict counts and preconditions held, or why it has no result."""
    rows = []
    for exp_id, e in entries.items():
        r = e.result
        if r is None:
            rows.append([exp_id, e.problem, "-", "-", "-", "-", "-", "-", "-"])
            continue
        v = r.verdicts
        held = sum(p.verdict == "holds" for p in r.preconditions)
        rows.append([r.id, r.title, r.preset + (" (plumbing only)" if r.preset == "smoke" else ""),
                     str(len(r.seeds)), str(v["holds"]), str(v["fails"]), str(v["inconclusive"]),
                     f"{held}/{len(r.preconditions)}", f"{r.runtime_s:.1f}"])
    return rows


INTRO = ("Every figure below was measured by the run that wrote its result file. A claim **holds** when "
         "its whole 95% interval lies on the paper's side of the target, **fails** when it lies wholly on "
         "the other side, and is **inconclusive** otherwise: the interval straddles the target, a "
         "precondition of the setting did not hold, the value was not finite, or the run was a smoke run "
         "(a plumbing check). Invariants hold by construction and are never counted as claims. "
         "docs/results.md says how each interval is computed.")


def render_markdown(entries: dict[str, RunEntry], root: Path) -> str:
    """The whole report as Markdown, plots linked relative to ``root``."""
    results = [e.result for e in entries.values() if e.result is not None]
    parts = ["# honed reproduction report", "", INTRO, "", f"**{totals_line(results)}**", ""]
    if not entries:
        parts += ["No runs found under this folder: run `honed run ID` or `honed reproduce` first.", ""]
        return "\n".join(parts)
    parts += [md_table(SUMMARY_HEADER, summary_rows(entries)), ""]
    for e in entries.values():
        if e.result is None:
            parts += [f"## {e.id}", "", f"No finished result: {e.problem} (`{e.folder.relative_to(root)}`).", ""]
            continue
        parts += markdown_section(e, root)
    last = reproduce_line(root)
    parts += ["## The last `honed reproduce`", "", last, ""] if last else []
    from honed.core.bench_report import performance_markdown

    return "\n".join(parts + performance_markdown())


def reproduce_line(root: Path) -> str:
    """One sentence on the last ``honed reproduce`` under ``root`` (from its reproduce.json), or ''."""
    try:
        data = read_checked_json(Path(root) / "reproduce.json")
        minutes = float(data["wall_s"]) / 60
        return (f"{len(data['ids'])} experiment(s) at preset {data['preset']}, {data['jobs']} at a time on "
                f"{data['cpu_count']} core(s), started {data['started']}: {minutes:.1f} min wall time"
                f"{'; crashed: ' + ', '.join(data['crashed']) if data['crashed'] else ''}.")
    except (OSError, CorruptFileError, KeyError, TypeError, ValueError):
        return ""


def markdown_section(entry: RunEntry, root: Path) -> list[str]:
    result, folder = entry.result, entry.folder
    env = result.environment
    parts = [f"## {result.id}: {result.title}", "",
             f"Preset `{result.preset}`, seeds {result.seeds}, runtime {result.runtime_s:.1f} s, "
             f"torch {env.get('torch')} on {env.get('device')} ({env.get('threads')} threads), honed source "
             f"{env.get('honed_source', '-')}. Result: `{entry.file.relative_to(root)}`. "
             f"Claims: {result.status}.", ""]
    if result.preset == "smoke":
        parts += [f"*{SMOKE_REASON}.*", ""]
    parts += [md_table(*readable_arms_table(result)), "", md_table(*claims_table(result)), ""]
    if result.preconditions:
        parts += [md_table(*preconditions_table(result)), ""]
    if result.invariants:
        parts += [md_table(*invariants_table(result)), ""]
    parts += [f"- interval: {m}" for m in interval_methods(result)]
    parts += [f"- non-finite values stored as null: {', '.join(f'{k} = {v}' for k, v in result.non_finite.items())}"] \
        if result.non_finite else []
    parts += [f"- {n}" for n in result.notes] + [""]
    if entry.plot is not None:
        parts += [f"![{result.id}]({entry.plot.relative_to(root)})", ""]
    return parts


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (cells with ``|`` escaped, newlines flattened)."""
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


CELL_CLASSES = {"holds": "holds", "FAILS": "fails", "inconclusive": "inconclusive", "ok": "holds", "BROKEN": "fails"}


def html_table(header: list[str], rows: list[list[str]], pictures: list[str] | None = None) -> str:
    """An HTML table; verdict cells get a fixed CSS class (never text taken from a result file). Every
    cell is escaped; ``pictures`` (markup honed drew itself, one per row) fill a last column unescaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            (f"<td class='{CELL_CLASSES[c]}'>" if c in CELL_CLASSES else "<td>") + html.escape(str(c)) + "</td>"
            for c in r) + (f"<td>{pictures[i]}</td>" if pictures else "") + "</tr>" for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:13px;vertical-align:top}th{background:#f3f3f3}td.holds{color:#080;font-weight:600}"
       "td.fails{color:#b00;font-weight:600}td.inconclusive{color:#a60}img{max-width:100%}"
       ".totals{font-size:1.1em;font-weight:600}")


def render_html(entries: dict[str, RunEntry]) -> str:
    """The whole report as one self-contained HTML page (plots inlined as base64 PNG)."""
    results = [e.result for e in entries.values() if e.result is not None]
    parts = [f"<!doctype html><meta charset='utf-8'><title>honed report</title><style>{CSS}</style>",
             "<h1>honed reproduction report</h1>", f"<p>{html.escape(INTRO.replace('**', ''))}</p>",
             f"<p class='totals'>{html.escape(totals_line(results))}</p>"]
    if not entries:
        parts.append("<p>No runs found: run <code>honed run ID</code> or <code>honed reproduce</code> first.</p>")
        return "\n".join(parts)
    parts.append(html_table(SUMMARY_HEADER, summary_rows(entries)))
    for e in entries.values():
        if e.result is None:
            parts.append(f"<h2>{html.escape(e.id)}</h2><p>No finished result: {html.escape(e.problem)}</p>")
            continue
        parts += html_section(e)
    from honed.core.bench_report import performance_html

    return "\n".join(parts + performance_html())


SVG_COLOURS = {"holds": "#080", "fails": "#b00", "inconclusive": "#a60"}


def interval_svg(check: Any, width: int = 180, height: int = 16) -> str:
    """A small inline picture of a claim: its 95% interval (bar), value (dot) and target (grey tick),
    coloured by verdict; empty when there is no value."""
    if check.measured is None:
        return ""
    lo, hi = check.interval if check.interval else (check.measured, check.measured)
    finite = [v for v in (lo, hi, check.measured, check.threshold) if math.isfinite(v)]
    left, right = min(finite), max(finite)
    pad = (right - left) * 0.1 or abs(right) * 0.1 or 1.0
    left, right = left - pad, right + pad
    x = lambda v: 4 + (width - 8) * (min(max(v, left), right) - left) / (right - left)  # noqa: E731
    colour = SVG_COLOURS[check.verdict]
    mid = height / 2
    return (f"<svg width='{width}' height='{height}' role='img'>"
            f"<line x1='{x(check.threshold):.1f}' x2='{x(check.threshold):.1f}' y1='0' y2='{height}' "
            f"stroke='#888' stroke-width='2'/>"
            f"<line x1='{x(lo):.1f}' x2='{x(hi):.1f}' y1='{mid}' y2='{mid}' stroke='{colour}' stroke-width='4'/>"
            f"<circle cx='{x(check.measured):.1f}' cy='{mid}' r='3.5' fill='{colour}'/></svg>")


def html_checks_table(header: list[str], rows: list[list[str]], checks: list) -> str:
    """A claims / preconditions table with a picture column (interval, value and target)."""
    return html_table(header + ["interval vs target"], rows, [interval_svg(c) for c in checks])


def html_section(entry: RunEntry) -> list[str]:
    result = entry.result
    parts = [f"<h2 id='{html.escape(result.id, quote=True)}'>{html.escape(result.id)}: {html.escape(result.title)}</h2>",
             f"<p>Preset {html.escape(result.preset)}, seeds {html.escape(str(result.seeds))}, runtime "
             f"{result.runtime_s:.1f} s. Claims: {html.escape(result.status)}.</p>",
             html_table(*readable_arms_table(result)), html_checks_table(*claims_table(result), result.claims)]
    if result.preconditions:
        parts.append(html_checks_table(*preconditions_table(result), result.preconditions))
    if result.invariants:
        parts.append(html_table(*invariants_table(result)))
    notes = [f"interval: {m}" for m in interval_methods(result)] + list(result.notes)
    parts += ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"] if notes else []
    if entry.plot is not None:
        data = base64.b64encode(entry.plot.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(result.id, quote=True)}' src='data:image/png;base64,{data}'>")
    return parts


def write_report(root: Path) -> tuple[Path, Path, int]:
    """Write report.md and report.html under ``root``; returns their paths and the result count."""
    root = Path(root)
    entries = find_runs(root)
    md = atomic_write_text(root / "report.md", render_markdown(entries, root))
    page = atomic_write_text(root / "report.html", render_html(entries))
    return md, page, sum(e.result is not None for e in entries.values())
