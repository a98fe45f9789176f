"""Progress bars for the steps that take seconds (calibration, sensitivity, fitting, reconstruction, pruning).

Why one helper: a bar is for a person watching a terminal. Written into a log file, a CI log or a pipe it is
noise (carriage returns, one line per refresh), so every long step asks ``progress_bar`` and gets a live tqdm
only when the caller turned progress on *and* the stream (stderr by default) is a terminal at that moment;
otherwise it gets a disabled tqdm, which writes nothing but still takes ``update``/``set_postfix_str`` calls,
so callers never branch on whether a bar is shown.

In a pass use ``ctx.progress_bar(iterable, "calibrating", total=n)`` (``PassContext.progress`` is the switch,
on in the CLI when stderr is a terminal); code without a context calls ``progress_bar(..., enabled=...)``.
This module sits at the bottom of the import graph (tqdm only), so calibration and analyses can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["progress_bar", "shows_progress"]


def shows_progress(enabled: bool | None, stream: IO[str] | None = None) -> bool:
    """Whether a bar is drawn: ``enabled`` (None: yes) and ``stream`` (default stderr) is a terminal."""
    if enabled is False:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None, *,
                 enabled: bool | None = True, unit: str = "it", stream: IO[str] | None = None,
                 **kwargs: Any) -> tqdm:
    """A tqdm over ``iterable`` (or a manual one, ``iterable=None`` with ``total``) that draws on ``stream``
    (default stderr) only when ``shows_progress(enabled, stream)``; else a disabled tqdm that writes nothing.
    The bar is cleared when done (``leave=False``) so the command's own output stays clean."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, leave=kwargs.pop("leave", False),
                disable=not shows_progress(enabled, stream), dynamic_ncols=True, **kwargs)
