"""The report's performance section: every ``benchmarks/results/*.json`` (written by ``make bench``) as
its measured values, one table per benchmark; nothing here is typed, every figure is read from a file.

The folder is ``$HONED_BENCHMARKS`` or ``benchmarks/results`` under the working directory. A benchmark
file is flattened to ``key path -> value`` rows (lists of numbers joined); its ``measured_on`` (or older
``environment``) becomes one line (machine, torch, threads, load) and its verdict on its target (the
``ratio`` / ``comparison`` / ``target`` / ``holds`` of honed.core.benchmark, or an older ``met``) a sentence.
"""
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ROWS = 60  # per benchmark; longer files say how many rows were left out
HEADER = ["measurement", "value"]


@dataclass
class Benchmark:
    """One benchmark result file: its name, rows, environment line and target sentence (or a problem)."""

    name: str
    rows: list[list[str]]
    environment: str = ""
    target: str = ""
    problem: str = ""


def bench_dir() -> Path:
    return Path(os.environ.get("HONED_BENCHMARKS", "benchmarks/results"))


def flatten(value: Any, prefix: str = "") -> list[list[str]]:
    """``[[key path, value], ...]`` for every leaf; a list of scalars stays one row."""
    from honed.core.report import fmt

    if isinstance(value, dict):
        return [row for key, item in value.items() for row in flatten(item, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [row for i, item in enumerate(value) for row in flatten(item, f"{prefix}[{i}]")]
    if isinstance(value, list):
        return [[prefix, ", ".join(fmt(v) for v in value)]]
    return [[prefix, fmt(value)]]


def read_benchmark(file: Path) -> Benchmark:
    """A benchmark file as rows; a file that is not JSON is named with the reason."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return Benchmark(file.stem, [], problem=f"unreadable ({err.__class__.__name__})")
    if not isinstance(data, dict):
        return Benchmark(file.stem, flatten(data))
    env = data.pop("measured_on", data.pop("environment", None))
    env_line = ", ".join(f"{k} {v}" for k, v in env.items() if k in ENV_KEYS) if isinstance(env, dict) else ""
    rows = flatten(data)
    if len(rows) > MAX_ROWS:
        rows = rows[:MAX_ROWS] + [["...", f"{len(rows) - MAX_ROWS} more rows in {file.name}"]]
    return Benchmark(file.stem, rows, env_line, target_line(data))


ENV_KEYS = ("device", "device_name", "processor", "machine", "cpu_count", "threads", "torch", "load_average")


def target_line(data: dict) -> str:
    """The file's own verdict on its target: honed.core.benchmark's ``ratio comparison target -> holds``,
    or an older file's ``target`` / ``met``; '' when it states none."""
    from honed.core.benchmark import verdict_words
    from honed.core.report import fmt

    if {"ratio", "target", "comparison", "holds"} <= set(data):
        verdict = verdict_words(data)
        return (f"ratio {fmt(data['ratio'])} {data.get('unit', '')} "
                f"(target {data['comparison']} {fmt(data['target'])}): {verdict}")
    if "target" in data and "met" in data:
        return f"target {fmt(data['target'])}: {'met' if data['met'] else 'NOT met'}"
    return ""


def load_benchmarks(folder: Path | None = None) -> list[Benchmark]:
    folder = bench_dir() if folder is None else Path(folder)
    return [read_benchmark(f) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


NONE_YET = "No benchmark results yet: `make bench` writes them to benchmarks/results/."


def describe(bench: Benchmark) -> str:
    return "; ".join(x for x in (bench.target, bench.environment, bench.problem) if x)


def performance_markdown(folder: Path | None = None) -> list[str]:
    """The performance section as Markdown lines."""
    from honed.core.report import md_table

    benches = load_benchmarks(folder)
    parts = ["## Performance (benchmarks/results)", ""]
    if not benches:
        return parts + [NONE_YET, ""]
    for bench in benches:
        parts += [f"### {bench.name}", "", describe(bench), ""]
        parts += [md_table(HEADER, bench.rows), ""] if bench.rows else []
    return parts


def performance_html(folder: Path | None = None) -> list[str]:
    """The performance section as HTML fragments (every value escaped)."""
    from honed.core.report import html_table

    benches = load_benchmarks(folder)
    parts = ["<h2 id='performance'>Performance (benchmarks/results)</h2>"]
    if not benches:
        return parts + [f"<p>{html.escape(NONE_YET.replace('`', ''))}</p>"]
    for bench in benches:
        parts += [f"<h3 class='benchmark'>{html.escape(bench.name)}</h3>", f"<p>{html.escape(describe(bench))}</p>"]
        parts += [html_table(HEADER, bench.rows)] if bench.rows else []
    return parts
