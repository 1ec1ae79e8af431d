"""Seconds of earlier, interrupted work that a resumed seed restored from disk (cached parts, training
checkpoints), so a result's ``runtime_s`` counts the whole computation, not only the last stretch."""
import contextvars

RESTORED_SECONDS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("restored", default=None)


def note_restored_seconds(seconds: float) -> None:
    """Record ``seconds`` of earlier work loaded instead of recomputed (no-op outside a runner seed)."""
    ledger = RESTORED_SECONDS.get()
    if ledger is not None:
        ledger.append(float(seconds))
