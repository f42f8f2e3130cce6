"""The mechanics every run-folder module shares: atomic writes, reads that name the file and field,
fingerprints, and the guards that keep a stage from losing or mixing work.

Guarantees (README "Failures and resuming"):
- every file is written to a sibling temp file and renamed into place, so a reader never sees half of one;
- `guard_output` refuses an output folder that is, contains or lies inside one of the stage's inputs;
- `OutputLock` lets one process at a time work on an output folder; a second gets a clear error;
- a folder the stage created only to fail in is removed again, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = ".neuroscribe.lock"


class RunFileError(ValueError):
    """A run-folder file is missing a field, holds the wrong type, or is not what it claims to be."""


class OutputInUse(RuntimeError):
    """Another process holds the lock of an output folder."""


# ---------------------------------------------------------------------------------- reading


def read_json(path: str | Path, what: str = "") -> dict:
    """A JSON object from `path`; one error naming the file when it is missing, garbled or not an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing{f' ({what})' if what else ''}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_text(path: str | Path) -> str:
    """A text file's content; one error naming the file and line when it is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RunFileError(f"{path}:{line}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None


def read_jsonl(path: str | Path, torn_tail_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line. A bad line is an error naming file and line;
    with `torn_tail_ok` an unparseable LAST line (a write cut by a kill) is skipped instead."""
    path = Path(path)
    lines = read_text(path).splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and n == len(lines):
                return
            raise RunFileError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise RunFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def field(obj: Mapping, name: str, where: str | Path, kind: type | tuple[type, ...] | None = None) -> Any:
    """obj[name], or one error naming the file and the field."""
    if name not in obj:
        raise RunFileError(f"{where}: field {name!r} is missing")
    value = obj[name]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RunFileError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------- writing


def strict(obj: Any) -> Any:
    """NaN -> None everywhere, so a file is strict JSON any reader accepts."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_text(path: str | Path, text: str) -> Path:
    """Write atomically: a temp file beside `path`, flushed, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise disk_error(err, path) from None
    return path


def write_json(path: str | Path, obj: Any, allow_nan: bool = False) -> Path:
    data = obj if allow_nan else strict(obj)
    return write_text(path, json.dumps(data, indent=2, allow_nan=allow_nan, default=str) + "\n")


def disk_error(err: OSError, path: str | Path) -> OSError:
    """An OSError restated as one line naming the path (full disk, read-only folder, ...)."""
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
    }.get(err.errno, err.strerror)
    return type(err)(err.errno, f"{path}: cannot write ({reason})")


# ---------------------------------------------------------------------------------- fingerprints


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (what a resumable run must match to be resumed)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(paths: list[Path]) -> str:
    """Content hash of files (their bytes and names), read in 1 MiB blocks."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- guards


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def guard_output(out: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output that is, or is inside, or contains an input: a stage never writes into (or,
    with --overwrite, deletes) what it reads."""
    o = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        if value is None or str(value) == "":
            continue
        i = Path(value).expanduser().resolve()
        if _inside(o, i) or _inside(i, o):
            raise ValueError(
                f"output {out} and input {name} {value} overlap; a stage never writes into its "
                "inputs: choose another output folder"
            )


def refuse_existing(path: str | Path, marker: str, overwrite: bool, what: str) -> None:
    """A finished output (its `marker` file present) is never replaced unless `overwrite`."""
    p = Path(path)
    if (p / marker).exists() and not overwrite:
        raise FileExistsError(
            f"{p} already holds {what} ({marker}); pass --overwrite to replace it, or choose another output folder"
        )


class OutputLock:
    """An exclusive lock on an output folder for the life of a `with` block (one per rank).

    The folder is created if needed; if this lock created it and it is empty at the end (the stage
    failed before writing anything), it is removed again. `name` puts the lock file elsewhere in the
    folder (`sibling_lock`: a lock beside a folder that is replaced whole).
    """

    def __init__(self, folder: str | Path, rank: int = 0, name: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / (name or (LOCK_FILE if rank == 0 else f"{LOCK_FILE}.rank{rank}"))
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> OutputLock:
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise disk_error(err, self.folder) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise OutputInUse(
                f"{self.folder} is in use by another neuroscribe process (lock {self.path}); "
                "wait for it to finish or choose another output folder"
            ) from None
        if not self._still_linked():  # the holder removed the file as we locked it: lock the new one
            os.close(self._fd)
            self._fd, created = None, self._created
            self.__enter__()
            self._created = created
            return self
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def _still_linked(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def sibling_lock(out: str | Path) -> OutputLock:
    """A lock for an output folder that is built aside and moved into place (dataset folders, publish):
    the lock file sits beside it (`.NAME.neuroscribe.lock`), since the folder itself is replaced."""
    out = Path(out)
    return OutputLock(out.parent, name=f".{out.name}{LOCK_FILE}")


@contextmanager
def building_folder(out: str | Path) -> Iterator[Path]:
    """A fresh, uniquely named sibling of `out` to build into (`.NAME.XXXX.building`): it never names an
    existing path, so building can never delete anything (an input called `out.building` included). It
    is removed again when the block fails; the caller moves it into place with `replace_folder`."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    except OSError as err:
        raise disk_error(err, out) from None
    try:
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(err, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: Path, out: str | Path, overwrite: bool) -> Path:
    """Move a finished `building_folder` into place; a non-empty `out` is replaced only with `overwrite`
    (checked again here: another process may have written it meanwhile)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
        out.replace(old / out.name)  # the old folder leaves in one rename, then goes
        shutil.rmtree(old, ignore_errors=True)
    elif out.exists():
        out.rmdir()
    tmp.replace(out)
    return out


def refuse_nonempty(out: str | Path, overwrite: bool) -> None:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
