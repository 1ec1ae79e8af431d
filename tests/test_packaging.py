"""Packaging: the wheel `python -m build` makes declares every extra with the requirements pyproject.toml
gives it, installs into a fresh venv and runs `honed list` there; tools/install_extra.py installs an
extra with its --no-deps packages. (The fresh venv borrows this environment's installed dependencies
through a .pth line, so the test needs no network: `make wheel-check [EXTRA=...]` does the full
install from the package index into an empty venv.)"""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("graph", "he", "mpc", "text", "data", "peers", "cluster")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    try:  # the distribution, not `import build` (a build/ folder in the checkout imports as a namespace)
        importlib.metadata.version("build")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("`build` is not installed (dev extra: make install adds it)")
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
                           str(work)], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (found,) = (work / "dist").glob("honed-*.whl")
    return found


def metadata(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    return [tuple(line.split(": ", 1)) for line in text.split("\n\n")[0].splitlines() if ": " in line]


def test_the_wheel_declares_every_extra_with_its_requirements(wheel):
    from packaging.requirements import Requirement

    fields = metadata(wheel)
    provided = {value for key, value in fields if key == "Provides-Extra"}
    declared = pyproject()["project"]["optional-dependencies"]
    assert set(EXTRAS) <= provided and provided == set(declared)
    by_extra: dict[str, set[str]] = {}
    for key, value in fields:
        if key == "Requires-Dist" and "extra ==" in value:
            req = Requirement(value)
            extra = str(req.marker).split('"')[1]
            by_extra.setdefault(extra, set()).add(f"{req.name}{req.specifier}")
    assert by_extra == {e: {str(Requirement(r)) for r in reqs} for e, reqs in declared.items()}
    names = {n for n in zipfile.ZipFile(wheel).namelist()}
    assert "honed/cli.py" in names and "honed/core/ray_runner.py" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_the_wheel_installs_in_a_fresh_venv_and_honed_list_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # this environment's dependencies (torch, numpy, rich, ...) without its editable honed: a plain path
    # line, so the .pth files of that folder (the editable finder among them) are not run
    folders = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_dependencies.pth").write_text("\n".join(folders) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", "--quiet", str(wheel)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HONED_RUNS")}
    env["COLUMNS"] = "200"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import honed; print(honed.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel's copy, not the checkout
    listed = subprocess.run([str(venv / "bin" / "honed"), "--out", str(tmp_path / "runs"), "list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    from honed.core.experiment import load_experiments

    assert all(name in listed.stdout for name in load_experiments().names())


def test_install_extra_adds_the_no_deps_packages_of_each_extra():
    no_deps = pyproject()["tool"]["honed"]["no-deps"]
    assert set(no_deps) <= set(pyproject()["project"]["optional-dependencies"])
    for extra in EXTRAS:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "install_extra.py"), "--dry-run",
                               "--target", "dist/honed.whl", extra], capture_output=True, text=True, timeout=60)
        lines = proc.stdout.splitlines()
        assert proc.returncode == 0 and f"dist/honed.whl[{extra}]" in lines[0] and " -c " in lines[0]
        assert len(lines) == 1 + (extra in no_deps)
        assert extra not in no_deps or lines[1].endswith(" --no-deps " + " ".join(no_deps[extra]))
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "install_extra.py"), "--dry-run", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown extra(s) nope" in bad.stderr
