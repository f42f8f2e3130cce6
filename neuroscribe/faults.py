"""Fault-injection points for the resume tests: a stage calls `kill_point` after each unit of work.

Setting the named environment variable to N makes the process SIGKILL itself right after its N-th
unit, exactly as a crash or an OOM kill would. Unset (the normal case) it does nothing.
"""

from __future__ import annotations

import os
import signal

COLLECT_SHARDS = "NEUROSCRIBE_TEST_KILL_AFTER_SHARDS"
EXPLAIN_FEATURES = "NEUROSCRIBE_TEST_KILL_AFTER_FEATURES"


def kill_point(env_var: str, done: int) -> None:
    limit = int(os.environ.get(env_var, "0"))
    if limit and done >= limit:
        os.kill(os.getpid(), signal.SIGKILL)
