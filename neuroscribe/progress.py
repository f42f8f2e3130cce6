"""Progress bars that stay readable in a log: on a terminal tqdm as usual; when stderr is a file or a
pipe (CI, `make demo > log`, a launcher's captured output) at most one line every `LOG_INTERVAL`
seconds, each ending in a newline, instead of thousands of carriage-return frames."""

from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL = 30.0  # seconds between two progress lines in a log


def progress(iterable: Any = None, *, file=None, **kwargs: Any):
    """tqdm.auto.tqdm(iterable, **kwargs), quiet as the module doc says when `file` (stderr) is no terminal."""
    from tqdm.auto import tqdm

    file = file or sys.stderr
    if not (hasattr(file, "isatty") and file.isatty()):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", LOG_INTERVAL * 4)
        kwargs.setdefault("ascii", True)
        kwargs["bar_format"] = kwargs.get("bar_format") or "{l_bar}{bar:20}{r_bar}\n"
    return tqdm(iterable, file=file, **kwargs)
