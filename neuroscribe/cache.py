"""A sqlite disk cache that every LLM call goes through, with per-stage usage accounting.

Entries are keyed by content: a hash of (backend kind, model, the request payload: messages or prompt,
sampling parameters with seed and sample index). Never by URL or API key, so the same call through
another server or account is a hit. Each completed call is committed at once (WAL mode): a killed
run loses only the calls that were in flight, and a rerun makes zero calls for what it already has.

Usage is recorded per call in a `calls` table labelled by `stage` and by a per-process `run_id`:
`usage()` reports this run, `usage(all_runs=True)` everything the file has seen. A cache hit costs
nothing, so hits add to `cached_hits` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_VERSION = 1  # bump when the payload layout changes, so old rows are never misread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, value TEXT NOT NULL,
    tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, usd REAL NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, stage TEXT NOT NULL,
    kind TEXT NOT NULL, model TEXT NOT NULL, key TEXT NOT NULL, cached INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, usd REAL NOT NULL,
    unpriced INTEGER NOT NULL, t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_run ON calls (run_id, stage);
"""


@dataclass(frozen=True)
class Usage:
    """What LLM calls cost. `calls` are real (uncached) calls; tokens and usd count those only."""

    calls: int = 0
    cached_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0
    unpriced_calls: int = 0  # remote calls whose model has no price (recorded as 0 USD)


def cache_key(kind: str, model: str, payload: dict[str, Any]) -> str:
    """Content hash of one call. `payload` must be JSON-serialisable and hold no secrets or URLs."""
    blob = json.dumps([KEY_VERSION, kind, model, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    """Disk cache of LLM results. Safe to share between threads and between processes (WAL)."""

    def __init__(self, path: str | Path, run_id: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = not self.path.exists()  # closed with nothing in it: removed again (nothing left behind)
        self.run_id = run_id or uuid.uuid4().hex
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self, attempts: int = 100) -> sqlite3.Connection:
        """A connection in WAL mode with the schema. Ranks opening a new file at once race on switching it
        to WAL, which sqlite answers "locked" without waiting: that one is retried."""
        for attempt in range(attempts):
            db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # NORMAL survives a killed process (the WAL is in the OS page cache); only power loss can drop
                # the last commits, which costs re-running a few calls, never a corrupt row.
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                db.commit()
                return db
            except sqlite3.DatabaseError as err:
                db.close()
                locked = isinstance(err, sqlite3.OperationalError) and "locked" in str(err)
                if not locked or attempt == attempts - 1:
                    raise self._unusable(err) from None
            time.sleep(0.05)
        raise ValueError(f"{self.path}: attempts must be >= 1")

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

    def _unusable(self, err: Exception) -> ValueError:
        return ValueError(f"{self.path}: not a usable neuroscribe cache ({err}); move it away or pass another --cache")

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a file damaged past its header (found only when a page is
        read) is one error naming it, not sqlite's bare "database disk image is malformed"."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as err:  # a full disk, a read-only folder, a lock held too long
                raise OSError(f"{self.path}: cannot use the cache ({err})") from None
            except sqlite3.DatabaseError as err:
                raise self._unusable(err) from None

    def get(self, key: str) -> Any | None:
        with self._using() as db:
            row = db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        try:
            return None if row is None else json.loads(row[0])
        except (TypeError, json.JSONDecodeError) as err:
            raise self._unusable(f"entry {key[:12]}: {err}") from None

    def put(
        self,
        key: str,
        value: Any,
        *,
        kind: str,
        model: str,
        stage: str,
        tokens_in: int = 0,
        tokens_out: int = 0,
        usd: float | None = 0.0,
    ) -> None:
        """Store one completed call and account it; committed before returning."""
        now = time.time()
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, kind, model, json.dumps(value, ensure_ascii=False), tokens_in, tokens_out, usd or 0.0, now),
                )
                self._record(stage, kind, model, key, False, tokens_in, tokens_out, usd, now)
        except sqlite3.OperationalError as err:  # a full disk, a read-only folder
            raise OSError(f"{self.path}: cannot write the cache ({err})") from None
        except sqlite3.DatabaseError as err:  # a damaged file
            raise self._unusable(err) from None

    def record_hit(self, key: str, *, kind: str, model: str, stage: str) -> None:
        with self._using() as db, db:
            self._record(stage, kind, model, key, True, 0, 0, 0.0, time.time())

    def _record(self, stage, kind, model, key, cached, tokens_in, tokens_out, usd, now) -> None:
        self._db.execute(
            "INSERT INTO calls (run_id, stage, kind, model, key, cached, tokens_in, tokens_out, usd, unpriced, t)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.run_id,
                stage,
                kind,
                model,
                key,
                int(cached),
                tokens_in,
                tokens_out,
                usd or 0.0,
                int(usd is None),
                now,
            ),
        )

    def usage(self, stage: str | None = None, all_runs: bool = False) -> Usage:
        """Calls, hits, tokens and USD for one stage (or all), this run (or every run in the file)."""
        where, args = [], []
        if not all_runs:
            where.append("run_id = ?")
            args.append(self.run_id)
        if stage is not None:
            where.append("stage = ?")
            args.append(stage)
        sql = (
            "SELECT COALESCE(SUM(1 - cached), 0), COALESCE(SUM(cached), 0), COALESCE(SUM(tokens_in), 0),"
            " COALESCE(SUM(tokens_out), 0), COALESCE(SUM(usd), 0), COALESCE(SUM(unpriced), 0) FROM calls"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._using() as db:
            calls, hits, tin, tout, usd, unpriced = db.execute(sql, args).fetchone()
        return Usage(int(calls), int(hits), int(tin), int(tout), float(usd), int(unpriced))

    def stages(self, all_runs: bool = False) -> dict[str, Usage]:
        """Usage for every stage label seen, for a report table."""
        sql, args = "SELECT DISTINCT stage FROM calls", ()
        if not all_runs:
            sql, args = sql + " WHERE run_id = ?", (self.run_id,)
        with self._using() as db:
            names = [r[0] for r in db.execute(sql, args).fetchall()]
        return {name: self.usage(name, all_runs) for name in sorted(names)}

    def __len__(self) -> int:
        with self._using() as db:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            try:
                empty = self._created and not any(
                    self._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() for table in ("entries", "calls")
                )
            except sqlite3.DatabaseError:  # a damaged file is never ours to delete
                empty = False
            self._db.close()
        if empty:  # a command that failed (or did nothing) before its first call leaves no cache file
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
