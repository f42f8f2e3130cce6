"""Progress in a log: a long loop writes a handful of newline-terminated lines, not a frame per step."""

from __future__ import annotations

import io

from neuroscribe.progress import progress


def test_a_long_loop_logged_to_a_file_writes_a_few_lines_not_thousands_of_frames():
    log = io.StringIO()  # not a terminal
    for _ in progress(range(20_000), file=log, desc="work"):
        pass
    text = log.getvalue()
    lines = [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    assert 1 <= len(lines) <= 4, lines  # the first, (maybe) one on the way, the last
    assert "work" in lines[-1] and "20000/20000" in lines[-1]
