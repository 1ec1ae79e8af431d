"""Implementations of the ``honed`` sub-commands (see ``honed.cli``)."""
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from honed.core.config import PRESETS, load_yaml, override, parse_assignments, preset, to_dict, validate_config
from honed.core.experiment import Experiment, Result, load_experiments
from honed.core.report import (VERDICT_LABEL, find_runs, fmt, fmt_interval, interval_methods, invariants_table,
                               readable_arms_table, totals_line, write_report)
from honed.core.runner import run_dir, run_experiment
from honed.core.errors import InputError
from honed.core.seed import resolve_device


def out_root(args) -> Path:
    from honed.cli import default_out

    return Path(args.out) if args.out else default_out()


def resolve_config(exp: type[Experiment], args) -> Any:
    cfg = preset(exp.Config, args.preset)
    if args.config:
        cfg = override(cfg, load_yaml(args.config))
    if args.sets:
        cfg = override(cfg, parse_assignments(args.sets))
    if args.seed is not None:
        cfg = override(cfg, {"seeds": [args.seed]})
    return validate_config(cfg)


def run_status(exp: type[Experiment], root: Path) -> str:
    """The status of an experiment's newest run, as ``honed report`` computes it."""
    entry = find_runs(root).get(exp.id) if (root / exp.id).exists() else None
    if entry is None:
        return "not run"
    if entry.result is None:
        return entry.problem
    return f"{entry.result.status} ({entry.result.preset})"


def cmd_list(args) -> int:
    registry = load_experiments()
    table = Table("id", "title", "family", "last run")
    for name in registry:
        exp = registry.get(name)
        table.add_row(name, exp.title, exp.family, run_status(exp, out_root(args)))
    Console().print(table)
    return 0


def cmd_show(args) -> int:
    exp = load_experiments().get(args.id)
    console = Console()
    console.print(f"[bold]{exp.id}[/bold]: {exp.title}  ({exp.family})\n{exp.paper}\n\n{exp.summary}\n")
    table = Table("field", *PRESETS)
    configs = {p: to_dict(preset(exp.Config, p)) for p in PRESETS}
    for field in configs["small"]:
        table.add_row(field, *[fmt(configs[p][field]) for p in PRESETS])
    console.print(table)
    console.print(f"method arms: {', '.join(exp.method)}; baselines: {', '.join(exp.baselines)}")
    for path in exp.components:
        console.print(f"component: {path}")
    for text in getattr(exp, "claims_tested", ()):
        console.print(f"claim: {text}")
    for text in exp.reconstructed:
        console.print(f"reconstructed (R): {text}")
    return 0


VERDICT_STYLE = {"holds": "green", "fails": "red", "inconclusive": "yellow"}


def print_result(result: Result, console: Console) -> None:
    """Arms, claims (paper figure, ours, interval, target, verdict and why), preconditions, invariants."""
    header, rows = readable_arms_table(result)
    table = Table(title=f"{result.id} ({result.preset}, seeds {result.seeds})")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for title, checks in (("claims", result.claims), ("preconditions", result.preconditions)):
        if checks:
            console.print(checks_table(title, checks))
    if result.invariants:
        header, rows = invariants_table(result)
        table = Table(*header, title="invariants (hold by construction; not claims)")
        for row in rows:
            table.add_row(*row[:-1], "[green]ok[/]" if row[-1] == "ok" else "[red]BROKEN[/]")
        console.print(table)
    for method in interval_methods(result):
        console.print(f"- interval: {method}", markup=False)
    for note in result.notes:
        console.print(f"- {note}", markup=False)
    console.print(f"claims: {result.status}; runtime {result.runtime_s:.1f} s")


def checks_table(title: str, checks: list) -> Table:
    """A claims or preconditions table that wraps (never cuts) in an 80-column terminal."""
    table = Table(title=title, show_lines=True)
    for name in ("name", "paper" if title == "claims" else "why needed", "ours [95% interval]", "target", "verdict"):
        table.add_column(name, overflow="fold")
    for c in checks:
        verdict = f"[{VERDICT_STYLE[c.verdict]}]{VERDICT_LABEL[c.verdict]}[/]"
        if c.reason:
            verdict += f"\n[dim]{escape(c.reason)}[/]"
        table.add_row(escape(c.name), escape(c.paper), f"{fmt(c.measured)}\n{fmt_interval(c.interval)}",
                      f"{c.comparison} {fmt(c.threshold)}", verdict)
    return table


def cmd_run(args) -> int:
    exp = load_experiments().get(args.id)
    cfg = resolve_config(exp, args)
    device = resolve_device(args.device)
    console = Console(stderr=args.json)
    root = out_root(args)
    result = run_experiment(exp(), cfg, args.preset, root, device, force=args.force,
                            progress=not args.json,
                            on_seed=lambda s: console.print(f"[dim]{exp.id}: seed {s}[/dim]"),
                            log=lambda line: console.print(f"[dim]{exp.id}: {line}[/dim]"))
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    else:
        print_result(result, console)
        console.print(f"written to {run_dir(root, exp.id, cfg, device)}")
    return 0


def cmd_reproduce(args) -> int:
    """Run several experiments (``--jobs`` at once), print each result, write the report and the totals."""
    registry = load_experiments()
    ids = [registry.get(i).id for i in args.ids] or registry.names()
    device = resolve_device(args.device)
    configs = {i: resolve_config(registry.get(i), args) for i in ids}  # every bad key refused before any run
    if args.jobs < 0:
        raise InputError(f"--jobs must be >= 0 (0: one per core), got {args.jobs}")
    console, root, failed = Console(), out_root(args), []
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(ids)))
    started = time.time()
    with reproduce_progress(console, root, ids) as tick:
        def finished(exp_id: str, result: Result | None, error: str) -> None:
            console.rule(f"{exp_id}")
            if result is None:  # one broken experiment must not hide the others' results
                failed.append(exp_id)
                console.print(f"[red]{exp_id} crashed: {escape(error)}[/red]")
            else:
                print_result(result, console)
            tick(exp_id)

        if args.ray:
            run_ray(args, {i: (registry.get(i), configs[i]) for i in ids}, root, str(device), console, finished)
        elif jobs > 1:
            from honed.core.parallel import run_parallel

            console.print(f"running {len(ids)} experiments, {jobs} at a time")
            run_parallel(configs, args.preset, root, str(device), args.force, jobs,
                         say=lambda line: console.print(f"[dim]{escape(line)}[/dim]"),
                         done=lambda i, data, err: finished(i, Result.from_json(data) if data else None, err))
        else:
            for exp_id in ids:
                try:
                    result = run_experiment(registry.get(exp_id)(), configs[exp_id], args.preset, root, device,
                                            force=args.force, on_seed=lambda s: console.print(f"[dim]seed {s}[/dim]"),
                                            log=lambda line: console.print(f"[dim]{escape(line)}[/dim]"))
                    finished(exp_id, result, "")
                except Exception as err:
                    finished(exp_id, None, f"{err.__class__.__name__}: {err}")
    record_reproduce(root, ids, jobs, args.preset, started, failed)
    md, page, count = write_report(root)
    console.print(f"report of {count} experiments: {md} and {page}")
    console.rule("summary")
    console.print(totals_line([e.result for e in find_runs(root).values() if e.result is not None]))
    if failed:
        sys.stderr.write(f"honed: error: {len(failed)} experiment(s) crashed: {', '.join(failed)}\n")
        return 1
    return 0


def run_ray(args, experiments: dict, root: Path, device: str, console: Console, finished) -> None:
    """``reproduce --ray``: every seed a Ray task (honed.core.ray_runner); ``finished`` as each ends."""
    from honed.core.ray_runner import run_on_ray

    console.print(f"running {len(experiments)} experiments on Ray ({args.ray}), one task per seed")
    run_on_ray(args.ray, experiments, args.preset, root, device, args.force,
               say=lambda line: console.print(f"[dim]{escape(line)}[/dim]"),
               done=lambda i, data, err: finished(i, Result.from_json(data) if data else None, err))


def record_reproduce(root: Path, ids: list[str], jobs: int, preset_name: str, started: float,
                     failed: list[str]) -> None:
    """Write ``<root>/reproduce.json``: what the last ``honed reproduce`` ran and its measured wall time
    (the report prints it)."""
    from honed.core.atomic import atomic_write_json

    atomic_write_json(root / "reproduce.json", {
        "ids": ids, "jobs": jobs, "preset": preset_name, "crashed": failed, "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started})


@contextmanager
def reproduce_progress(console: Console, root: Path, ids: list[str]):
    """An overall bar for ``reproduce`` whose ETA weighs each experiment by its last stored runtime
    (experiments never run count as the mean of the known ones); yields ``tick(exp_id)``."""
    from honed.core.parallel import expected_seconds

    known = {i: expected_seconds(root, i) for i in ids}
    mean = (sum(v for v in known.values() if v) / max(1, sum(1 for v in known.values() if v))) or 60.0
    weight = {i: known[i] or mean for i in ids}
    if not sys.stderr.isatty():
        yield lambda exp_id: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("reproduce"), BarColumn(), TextColumn("{task.fields[done]}/" + str(len(ids))),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("reproduce", total=sum(weight.values()), done=0)
        count = {"n": 0}

        def tick(exp_id: str) -> None:
            count["n"] += 1
            bar.update(task, advance=weight[exp_id], done=count["n"])

        yield tick


def cmd_report(args) -> int:
    root = out_root(args)
    md, page, count = write_report(root)
    console = Console()
    console.print(f"report of {count} experiments: {md} and {page}")
    console.print(totals_line([e.result for e in find_runs(root).values() if e.result is not None]))
    return 0
