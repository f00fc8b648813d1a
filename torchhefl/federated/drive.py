"""The loop over rounds, written once: the in-process simulation and the Flower ServerApp both drive it.

:func:`drive` runs rounds through a ``run_round`` callable (a :class:`~torchhefl.federated.Server`'s,
or a :class:`~torchhefl.federated.simulation.Simulation`'s, which adds its sites' own timings),
records each round, saves a checkpoint, prints the round's line and sums the byte and time totals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torchhefl.federated.recorder import RunRecorder

__all__ = ["drive", "round_line", "summarize"]


def drive(
    run_round: Callable[[int], Mapping],
    *,
    first: int,
    rounds: int,
    recorder: RunRecorder | None = None,
    save: Callable[[], None] | None = None,
    echo: Callable[[str], None] | None = None,
    progress: str | None = None,
    after_round: Callable[[int, Mapping], None] | None = None,
    totals: Mapping | None = None,
) -> tuple[Mapping, dict]:
    """Run rounds ``first`` to ``rounds``; returns ``(last round's result, totals)``.

    After each round: ``recorder.record(result)``, then ``save()`` (a checkpoint), then ``echo`` of
    its :func:`round_line`, then ``after_round(round, result)``. ``progress`` (a description) shows a
    progress bar, through which the lines are then written. ``totals`` (``bytes_up``, ``bytes_down``,
    ``seconds``) are those of rounds already run (a resumed run); they are added to.
    """
    totals = {"bytes_up": 0, "bytes_down": 0, "seconds": 0.0, **(totals or {})}
    numbers = range(first, rounds + 1)
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(numbers, desc=progress, unit="round", leave=False)
        numbers = bar
    last: Mapping = {}
    try:
        for rnd in numbers:
            last = run_round(rnd)
            if recorder is not None:
                recorder.record(last)
            if save is not None:
                save()
            totals["bytes_up"] += last["bytes_up"]
            totals["bytes_down"] += last["bytes_down"]
            totals["seconds"] += last["time"]
            if echo is not None:
                (bar.write if bar is not None else echo)(round_line(last, rounds))
            if after_round is not None:
                after_round(rnd, last)
    finally:
        if bar is not None:
            bar.close()
    return last, totals


def summarize(last: Mapping, totals: Mapping, rounds: int) -> dict:
    """A run's summary: the last round's test metrics (``test_accuracy``, ``test_auc``, ``test_f1``,
    ``test_loss``, a multi-class model's ``test_count_<k>`` / ``test_predicted_<k>``, your own
    metrics' ``test_<name>``), the number of rounds and the totals."""
    return {
        "rounds": rounds,
        **{k: last[k] for k in ("test_accuracy", "test_auc", "test_f1", "test_loss")},
        **{k: last[k] for k in last if k.startswith("test_")},
        **totals,
    }


def round_line(result: Mapping, rounds: int) -> str:
    """The one line printed for a finished round."""
    line = (
        f"round {result['round']:3d}/{rounds}  acc {result['test_accuracy']:.4f}  auc {result['test_auc']:.4f}  "
        f"loss {result['test_loss']:.4f}  up {_kib(result['bytes_up'])}  down {_kib(result['bytes_down'])}  "
        f"{result['time']:.2f}s"
    )
    if "epsilon" in result:
        line += f"  eps {result['epsilon']:.3f}"
    if result["dropped"]:
        line += f"  dropped {','.join(result['dropped'])}"
    return line


def _kib(n: int) -> str:
    return f"{n / 1024:.1f}KiB"
