"""Shared fixtures: a throwaway runs folder and a tiny registered-on-demand experiment."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh runs folder, also exported as HONED_RUNS for CLI tests."""
    root = tmp_path / "runs"
    monkeypatch.setenv("HONED_RUNS", str(root))
    return root
