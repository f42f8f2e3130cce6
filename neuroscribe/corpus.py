"""Text corpora streamed into fixed-length token windows.

Default corpus `builtin:python-docs`: the English prose of the Python Language Reference that
every CPython ships as `pydoc_data.topics` (~460 KB, PSF License 2.0), split into paragraphs.
It needs no download and no extra package, so collect works on any offline machine.

Windowing rule: documents are tokenised without special tokens, joined with the tokenizer's EOS
id between them, and the stream is cut into windows of exactly `window` tokens (the tail shorter
than a window is dropped). Window ids count from 0 in stream order, so the same corpus and tokenizer
give the same ids; each window records the range of documents it touches (`doc_span`), which is
what keeps neighbouring windows of one document in one split.

Context and the attention sink: every window is fed after a context that is never part of the
exemplar: the tokens the tokenizer itself prepends to any text (Llama's BOS; nothing for GPT-2 and
SmolLM2), then the `context` tokens that precede the window in the stream (the corpus's first window
gets the separator instead). Without it, a model that prepends nothing would see each window's first
real token at position 0, the attention sink, whose activations are abnormal: measured on
SmolLM2-135M (layers 4 and 12, every neuron, both polarities, top-8 of 96 windows of 32 tokens),
top exemplars peaked at position 0 in 0.0% of cases against the 3.1% of chance, i.e. position 0 is
effectively never an exemplar's peak; with 4 preceding tokens the rate is 3.0% and 2.8%. A lone EOS
or BOS token does not fix it for that model (0.6% and 0.9% at layer 4). The preceding tokens also give
the window's first tokens their real left context.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.configs import BUILTIN_CORPUS as BUILTIN  # noqa: E402
from neuroscribe.runs.files import file_digest, fingerprint, read_text

_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Window:
    window_id: int
    token_ids: tuple[int, ...]
    doc_span: tuple[int, int] = (0, 0)  # first and last document (stream index) the window touches
    context: tuple[int, ...] = ()  # the stream tokens just before the window (fed first, never an exemplar)


def builtin_documents() -> Iterator[str]:
    import pydoc_data.topics as topics

    for name in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[name]):
            text = " ".join(para.split())
            if len(text) >= 80:
                yield text


def iter_documents(dataset: str = BUILTIN, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Stream documents from the builtin corpus, a local text/jsonl/parquet/csv file or folder, or a hub id."""
    if dataset == BUILTIN:
        yield from builtin_documents()
        return
    import datasets

    path = Path(dataset).expanduser()
    files: list[Path] = []
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in _FORMATS) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"dataset: {path} holds no .txt/.jsonl/.json/.parquet/.csv file")
        kinds = {_FORMATS.get(p.suffix) for p in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(f"dataset: {path}: files must share one of the formats {sorted(_FORMATS)}")
        stream = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split=split, streaming=True)
    elif dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset: {dataset} does not exist")
    else:
        stream = datasets.load_dataset(dataset, split=split, streaming=True)
    try:
        yield from _texts(stream, dataset, text_field)
    except UnicodeDecodeError:  # datasets names no file: find the one that is not UTF-8 (file and line)
        for p in files:
            if p.suffix != ".parquet":
                read_text(p)
        raise ValueError(f"dataset {dataset}: not UTF-8 text") from None


def _texts(stream, dataset: str, text_field: str) -> Iterator[str]:
    for i, row in enumerate(stream):
        if text_field not in row:
            raise KeyError(f"dataset {dataset}: row {i} has no field {text_field!r} (fields: {sorted(row)})")
        text = row[text_field]
        if text and text.strip():
            yield text


def dataset_fingerprint(dataset: str = BUILTIN) -> str:
    """A hash of what the dataset spec holds NOW: the bytes of local files, the builtin corpus's text,
    or (for a hub id, which cannot be read offline) the id itself."""

    if dataset == BUILTIN:
        import pydoc_data.topics as topics

        return fingerprint(topics.topics)
    path = Path(dataset).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in _FORMATS) if path.is_dir() else [path]
        return file_digest(files)
    return fingerprint({"hub_dataset": dataset})


def iter_windows(
    tokenizer, documents: Iterator[str], window: int, max_windows: int | None = None, context: int = 0
) -> Iterator[Window]:
    """Cut a document stream into `window`-token windows, each with its `context` preceding tokens
    (see module docstring)."""
    if window < 2:
        raise ValueError(f"window length must be >= 2, got {window}")
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    before = tuple((sep or [0]) * context)  # what precedes the first window: the separator
    buffer: list[int] = []
    starts: list[tuple[int, int]] = []  # (offset in buffer, document index) of each document begun in it
    n = 0
    for d, doc in enumerate(documents):
        starts.append((len(buffer), d))
        buffer.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + sep)
        while len(buffer) >= window:
            first = max(i for off, i in starts if off <= 0)  # the document holding the window's first token
            last = max(i for off, i in starts if off < window)
            yield Window(n, tuple(buffer[:window]), (first, last), before)
            before = tuple(buffer[window - context : window]) if context else ()
            buffer = buffer[window:]
            moved = [(off - window, i) for off, i in starts]
            covering = max(i for off, i in moved if off <= 0)  # the document the next window starts in
            starts = [(off, i) for off, i in moved if off > 0 or i == covering]
            n += 1
            if max_windows is not None and n >= max_windows:
                return


NEUTRAL_CONTEXT_TEXT = "Here is one word:"  # says nothing about the token that follows


def neutral_context(tokenizer, n: int) -> list[int]:
    """The last `n` tokens of NEUTRAL_CONTEXT_TEXT: what an out-of-context token is read after (behind the
    tokenizer's own prefix), so it gets `n` tokens of left context as every window does, without its own.
    Read bare, a token sits at position 0 with SmolLM2 (no BOS): the attention-sink position, whose
    activations are unlike any position an exemplar's tokens occupy."""
    ids = tokenizer(NEUTRAL_CONTEXT_TEXT, add_special_tokens=False)["input_ids"]
    return ids[len(ids) - n :] if 0 < n <= len(ids) else (ids if n > 0 else [])


def context_prefix(tokenizer) -> list[int]:
    """Tokens the tokenizer prepends to any text (e.g. Llama's BOS), fed before every window."""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    return ids[: len(ids) - len(bare)] if ids[len(ids) - len(bare) :] == bare else []
