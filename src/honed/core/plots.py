"""Plots of results (matplotlib, Agg backend, written atomically)."""
from pathlib import Path
from typing import Any

from honed.core.atomic import atomic_write


def plot_curves(result: Any, fig: Any) -> bool:
    """One axis per curve of ``result.curves`` (x = epoch), one line per arm; False if none."""
    curves = result.curves
    if not curves:
        return False
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, by_arm) in zip(axes, curves.items()):
        for arm, ys in by_arm.items():
            style = "-" if result.is_method_arm(arm) else "--"
            ax.plot(range(1, len(ys) + 1), ys, style, label=arm)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return True


def save_experiment_plot(exp: Any, result: Any, path: Path) -> Path | None:
    """Render ``exp.plot(result, fig)`` to ``path`` (PNG); returns None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 3.6), dpi=100)
    try:
        if not exp.plot(result, fig):
            return None
        fig.suptitle(f"{result.id}: {result.title} (preset {result.preset}, seeds {len(result.seeds)})", fontsize=10)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
