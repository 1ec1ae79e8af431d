"""Install honed with some of its extras, including the packages that must go in with ``pip --no-deps``.

A few engines declare dependencies that cannot install beside the pinned torch (crypten pins the dead
``sklearn`` package and torchvision; torchattacks pulls a torchvision that cannot import; the two corpus
packages declare broken dependencies). Their extras list what the packages really need, and the
packages themselves are named in pyproject.toml under ``[tool.honed.no-deps]``; this script installs
both halves, so an extra is one command:

    python tools/install_extra.py mpc                       # honed from this checkout, editable, + crypten
    python tools/install_extra.py --target dist/honed-0.1.0-py3-none-any.whl text peers
    python tools/install_extra.py --no-deps-only dev,data,peers,text,mpc   # only the --no-deps half (make install)
    python tools/install_extra.py --dry-run he              # print the pip commands, run nothing

pip runs as ``<this python> -m pip install -c constraints.txt`` (torch stays on the pinned build).
"""
import argparse
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def commands(extras: list[str], target: str, no_deps_only: bool, pip: list[str]) -> list[list[str]]:
    """The pip commands that install ``target[extras]`` and then the extras' --no-deps packages."""
    data = project()
    known = set(data["project"]["optional-dependencies"])
    unknown = sorted(set(extras) - known)
    if unknown:
        raise SystemExit(f"install_extra: unknown extra(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    no_deps = [pkg for extra in extras for pkg in data["tool"]["honed"]["no-deps"].get(extra, [])]
    spec = f"{target}[{','.join(extras)}]" if extras else target
    steps = [] if no_deps_only else [pip + (["-e", spec] if Path(target).is_dir() else [spec])]
    return steps + ([pip + ["--no-deps", *no_deps]] if no_deps else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras, space- or comma-separated")
    parser.add_argument("--target", default=str(ROOT), help="a wheel, or a source folder (default: this checkout)")
    parser.add_argument("--no-deps-only", action="store_true", help="install only the --no-deps packages")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args()
    extras = [e for item in args.extras for e in item.split(",") if e]
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt")]
    for command in commands(extras, args.target, args.no_deps_only, pip):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
