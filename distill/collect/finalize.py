"""Finalise: mining state -> the store's (features, exemplars) tables.

Per feature, the windows each source keeps, in this order (a window may sit in several sources):
- top: the top_k windows by max activation (those that activate at all);
- quantile: per_quantile windows from each of `quantiles` activation bins of the uniform pool of
  activating windows (windows already in top excluded);
- random: the first random_k windows of the uniform sample of all windows, whatever they are (a
  random window that is also a top window is KEPT, so the random sample stays unbiased);
- inactive: the first inactive_k windows of the whole uniform sample (random_k + inactive_pool) that
  peak at or below ACTIVE_FRACTION x the feature's max: real non-activating text;
- hard_negative: the candidates of `negatives` that pass its rule;
- interval: per equal-width activation interval of (0, max], per_interval windows (`intervals`);
- other_context: windows holding one of the top tokens, not top windows (`negatives`);
- out_of_context: top-activating tokens, each read alone (`out_of_context`): one token per row.

Splits follow the one rule of `splits` (groups of windows sharing a document or identical tokens,
dealt strongest source first so every split gets strong and weak windows and each source in the
proportions of the sampling protocol, as far as the groups allow). Every step is vectorised over features: no
Python loop runs per exemplar row.

Token text is cut from the decoded window, so tokens join back to the text exactly, word spaces of
SentencePiece-style tokenizers included (`TokenText`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from neuroscribe.records import ACTIVE_FRACTION, OUT_OF_CONTEXT, SOURCES, FeatureStats
from neuroscribe.runs.store import FEATURE_SCHEMA, exemplar_table, feature_row, list_column

from .mining import Miner, moment_stats, top_tokens
from .negatives import top_token_slots
from .slots import Slots
from .splits import assign_splits

_LOOKALIKE = str.maketrans("<>[]", "‹›⟦⟧")
_BROKEN = "\ufffd"  # what a lone byte of a multi-byte character decodes to


class TokenText:
    """Per-token text that joins back to the decoded window.

    A token's text is what it adds after a fixed anchor token (`decode([anchor, id])` minus
    `decode([anchor])`), memoised per id: that keeps the word space a SentencePiece decoder strips
    from a lone leading piece (`▁the` -> " the", not "the"). A window holding a byte-fallback token
    (alone it decodes to U+FFFD) is cut from its own incremental decoding instead, so a character split
    over several tokens is given whole to the token that completes it. The subject's special tokens get
    look-alike brackets so they can never act as chat control tokens in a later prompt
    (<|im_start|> -> ‹|im_start|›, [INST] -> ⟦INST⟧).
    """

    def __init__(self, tok):
        self.tok, self.memo = tok, {}
        added = getattr(tok, "added_tokens_decoder", {})
        self.special = set(tok.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
        anchor = tok("x", add_special_tokens=False)["input_ids"]
        self.anchor = anchor[:1]
        self.anchor_text = tok.decode(self.anchor)

    def piece(self, i: int) -> str:
        if i not in self.memo:
            if i in self.special:
                self.memo[i] = self.tok.convert_ids_to_tokens(i).translate(_LOOKALIKE)
            else:
                text = self.tok.decode(self.anchor + [i])
                ok = text.startswith(self.anchor_text)
                self.memo[i] = text[len(self.anchor_text) :] if ok else self.tok.decode([i])
        return self.memo[i]

    def __call__(self, ids) -> tuple[str, ...]:
        pieces = tuple(self.piece(int(i)) for i in ids)
        if any(_BROKEN in p for p in pieces):
            return self._incremental(list(ids))
        return pieces

    def _incremental(self, ids: list[int]) -> tuple[str, ...]:
        """Token i's text = what decoding ids[:i+1] adds to decoding ids[:i] (after the anchor)."""
        out, before = [], self.anchor_text
        for k, i in enumerate(ids):
            if i in self.special:
                out.append(self.piece(i))
                continue
            text = self.tok.decode(self.anchor + [t for t in ids[: k + 1] if t not in self.special])
            if _BROKEN in text[len(before) :] and k + 1 < len(ids):
                out.append("")  # an incomplete character: it goes to the token that completes it
                continue
            common = len(before)
            while common and not text.startswith(before[:common]):
                common -= 1
            out.append(text[common:])
            before = text
        return tuple(out)


@dataclass
class _Picked:
    """Rows one source keeps, all features at once: feature column, sort position within the feature's
    rows of this source, quantile or interval bin (-1: none), which slots hold the activations, and the
    slot row (the feature column unless given) and index."""

    col: np.ndarray
    pos: np.ndarray
    quantile: np.ndarray
    slots: Slots
    slot: np.ndarray
    row: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.row is None:
            self.row = self.col

    @classmethod
    def of(cls, mask: torch.Tensor, order: torch.Tensor, slots: Slots, pos=None, quantile=None) -> _Picked:
        col, i = mask.nonzero(as_tuple=True)
        pos = i if pos is None else pos[col, i]
        q = torch.full_like(i, -1) if quantile is None else quantile[col, i]
        return cls(col.numpy(), pos.numpy(), q.numpy(), slots, order[col, i].numpy())

    @classmethod
    def grouped(cls, col: np.ndarray, slot: np.ndarray, slots: Slots, row=None, quantile=None) -> _Picked:
        """Rows already grouped by feature, in order: positions count from 0 within each feature."""
        pos = np.arange(len(col)) - np.searchsorted(col, col)
        q = np.full(len(col), -1) if quantile is None else quantile
        return cls(col, pos, q, slots, slot, row)


def _select(miner: Miner, fmax: torch.Tensor, window_ids: np.ndarray, token_matrix: np.ndarray) -> tuple[list, list]:
    """Per source of `SOURCES` but out_of_context, the rows each feature keeps (module doc), and each
    feature's quantile boundaries."""
    cfg = miner.config
    inf = float("inf")
    top_order, top_keys = miner.top.ordered()
    top_ok = top_keys > 0
    top_ids = torch.where(top_ok, miner.top.ids.gather(1, top_order), torch.full_like(top_order, -2))
    # activating pool in priority order, minus top windows; cut by activation rank into quantile bins
    pool_order, pool_keys = miner.pool.ordered()
    pool_ids = miner.pool.ids.gather(1, pool_order)
    pool_max = miner.pool.maxes.gather(1, pool_order)
    valid = (pool_keys != inf) & ~(pool_ids.unsqueeze(2) == top_ids.unsqueeze(1)).any(2)
    n_valid = valid.sum(1, keepdim=True)
    by_act = torch.argsort(torch.where(valid, pool_max, torch.full_like(pool_max, inf)), dim=1, stable=True)
    act_rank = torch.empty_like(by_act).scatter_(1, by_act, torch.arange(by_act.shape[1]).expand_as(by_act))
    n_bins = cfg.quantiles if cfg.per_quantile > 0 else 0
    starts = [n_valid * q // max(n_bins, 1) for q in range(n_bins + 1)]  # bin q: ranks [starts[q], starts[q+1])
    qbin = sum(((act_rank >= s).long() for s in starts[1:-1]), torch.zeros_like(act_rank))
    in_bin = [valid & (qbin == q) for q in range(n_bins)]
    quant = torch.zeros_like(valid)
    for member in in_bin:
        quant |= member & (member.cumsum(1) <= cfg.per_quantile)
    sorted_max = pool_max.gather(1, by_act).tolist()
    first = torch.cat(starts, 1).tolist()  # [F, quantiles + 1]
    boundaries = [  # each non-empty bin's lowest max
        tuple(sorted_max[f][at[q]] for q in range(n_bins) if at[q + 1] > at[q]) for f, at in enumerate(first)
    ]
    # the uniform sample: random = its first random_k; inactive = its first inactive_k quiet windows
    rand_order, rand_keys = miner.random.ordered()
    uniform = rand_keys != inf
    rand_max = miner.random.maxes.gather(1, rand_order)
    quiet = uniform & (fmax > 0).unsqueeze(1) & (rand_max <= ACTIVE_FRACTION * fmax[:, None])
    iv_col, iv_row, iv_slot, iv = (t.numpy() for t in miner.interval.pick(fmax, top_ids, cfg.per_interval))
    picked = {
        "top": _Picked.of(top_ok, top_order, miner.top),
        "quantile": _Picked.of(
            quant, pool_order, miner.pool, pos=qbin * miner.pool.k + torch.arange(miner.pool.k), quantile=qbin
        ),
        "interval": _Picked.grouped(iv_col, iv_slot, miner.interval.slots, row=iv_row, quantile=iv),
        "random": _Picked.of(uniform & (uniform.cumsum(1) <= cfg.random_k), rand_order, miner.random),
        "inactive": _Picked.of(quiet & (quiet.cumsum(1) <= cfg.inactive_k), rand_order, miner.random),
        "hard_negative": _Picked.grouped(*top_token_slots(miner, window_ids, token_matrix), miner.hard),
        "other_context": _Picked.grouped(*top_token_slots(miner, window_ids, token_matrix, False), miner.context),
    }
    return [picked[s] for s in SOURCES if s != OUT_OF_CONTEXT], boundaries


def finalize(miner: Miner, tok, alone: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[pa.Table, pa.Table]:
    """Turn mining state into the store's (features, exemplars) tables (module doc); `alone` holds the
    out-of-context tokens [F, n] (-1: none) and each one's activation when read alone [F, n]."""
    cfg = miner.config
    stats = {k: v.tolist() for k, v in moment_stats(miner.moments).items()}
    fmax_t = miner.top.keys.max(1).values.float()
    fmax = fmax_t.tolist()
    n_tok = miner.moments[:, 0].long().tolist()
    n_active = miner.n_active.tolist()
    text = TokenText(tok)
    window_ids = np.array(sorted(miner.window_tokens), dtype=np.int64)
    token_matrix = np.array([miner.window_tokens[int(w)] for w in window_ids], dtype=np.int32).reshape(
        len(window_ids), miner.window
    )
    picked, boundaries = _select(miner, fmax_t, window_ids, token_matrix)
    src = np.concatenate([np.full(len(p.col), i) for i, p in enumerate(picked)])
    col = np.concatenate([p.col for p in picked])
    slots = [p.slots for p in picked]
    slot = np.concatenate([p.slot for p in picked])
    slot_row = np.concatenate([p.row for p in picked])
    wid_all = np.concatenate([p.slots.ids.numpy()[p.row, p.slot] for p in picked])
    keep = ~np.array([not m > 0 for m in fmax])[col]  # a dead feature keeps no exemplar
    order = np.lexsort((np.concatenate([p.pos for p in picked]), src, col))
    order = order[keep[order]]
    src, col, slot, slot_row, wid = src[order], col[order], slot[order], slot_row[order], wid_all[order]
    quantile = np.concatenate([p.quantile for p in picked])[order]
    row = np.searchsorted(window_ids, wid)
    docs = np.array([miner.window_docs[int(w)] for w in window_ids], dtype=np.int64).reshape(-1, 2)
    _, content = np.unique(token_matrix, axis=0, return_inverse=True)
    content = content.reshape(-1)
    n_splits = len(cfg.splits)
    weights = np.array([cfg.preset.share(s, n_splits) for s in SOURCES]).T  # [splits, sources]
    split = assign_splits(col, docs[row, 0], docs[row, 1], content[row], src, n_splits, weights)
    kept = split >= 0  # a row its protocol keeps out of the split its group landed in is left out
    src, col, slot, slot_row, wid, quantile, row, split = (
        a[kept] for a in (src, col, slot, slot_row, wid, quantile, row, split)
    )
    segment = np.flatnonzero(np.r_[True, (col[1:] != col[:-1]) | (src[1:] != src[:-1])])
    rank = np.arange(len(col)) - np.repeat(segment, np.diff(np.r_[segment, len(col)]))
    acts = torch.empty(len(col), miner.window, dtype=torch.float32)  # every row is filled below
    for i, s in enumerate(slots):
        at = np.flatnonzero(src == i)
        if len(at):
            acts[torch.from_numpy(at)] = s.acts[torch.from_numpy(slot_row[at]), torch.from_numpy(slot[at])]
    features = miner.features
    tops = top_tokens(miner.top, 5).tolist()
    feature_rows = []
    for c, fid in enumerate(features):
        dead = not fmax[c] > 0
        stats_col = FeatureStats(
            max_activation=max(fmax[c], 0.0),
            mean=stats["mean"][c],
            variance=stats["variance"][c],
            skewness=stats["skewness"][c],
            kurtosis=stats["kurtosis"][c],
            n_tokens=n_tok[c],
            frac_active=n_active[c] / max(n_tok[c], 1),
            quantile_boundaries=() if dead else boundaries[c],
        )
        feature_rows.append(feature_row(fid, stats_col, dead, () if dead else text([t for t in tops[c] if t >= 0])))
    scalars = _scalars(miner, col, split, src, rank, quantile, wid, docs[row, 0], docs[row, 1])
    pieces, index = _piece_index(text, token_matrix)
    exemplars = exemplar_table(
        scalars,
        _token_texts(index[row], pieces),
        list_column(token_matrix[row], pa.int32()),
        list_column(acts.numpy(), pa.float32()),
    )
    if alone is not None:
        exemplars = pa.concat_tables([exemplars, _alone_table(miner, text, *alone, weights)])
    return pa.Table.from_pylist(feature_rows, FEATURE_SCHEMA), exemplars


def _alone_table(miner: Miner, text: TokenText, tokens: np.ndarray, values: np.ndarray, weights) -> pa.Table:
    """Out-of-context rows: one token each, window_id -1 - token id, no document; ranked by activation
    in the feature's top windows; dealt like any source (each token its own group)."""
    col, rank = np.nonzero(tokens >= 0)
    tid = tokens[col, rank]
    source = np.full(len(col), SOURCES.index(OUT_OF_CONTEXT))
    own = np.arange(len(col))  # a document of its own: tokens group only by identity
    split = assign_splits(col, own, own, tid, source, len(miner.config.splits), weights)
    none = np.full(len(col), -1, np.int64)
    return exemplar_table(
        _scalars(miner, col, split, source, rank, none, -1 - tid, none, none),
        _token_texts(np.arange(len(col)).reshape(-1, 1), [text.piece(int(t)) for t in tid]),
        list_column(tid.reshape(-1, 1).astype(np.int32), pa.int32()),
        list_column(values[col, rank].reshape(-1, 1).astype(np.float32), pa.float32()),
    )


def _scalars(miner: Miner, col, split, source, rank, quantile, window_id, doc_first, doc_last) -> dict:
    """The exemplar table's scalar columns from per-row codes (feature column, split and source index)."""
    features = miner.features
    per_col = pa.array(np.asarray(col, dtype=np.int32))
    return {
        "feature": _decode(per_col, [f.key for f in features]),
        "layer": np.array([f.layer for f in features], dtype=np.int32)[col],
        "kind": _decode(per_col, [f.kind for f in features]),
        "split": _decode(pa.array(split.astype(np.int32)), list(miner.config.splits)),
        "source": _decode(pa.array(source.astype(np.int32)), list(SOURCES)),
        "rank": rank.astype(np.int32),
        "quantile": quantile.astype(np.int32),
        "window_id": window_id,
        "doc_first": doc_first,
        "doc_last": doc_last,
    }


def _token_texts(index: np.ndarray, pieces: list[str]) -> pa.Array:
    """The tokens column: row i holds pieces[index[i, t]], dictionary-encoded (no string copied per token)."""
    rows, width = index.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    values = pa.DictionaryArray.from_arrays(
        pa.array(index.reshape(-1).astype(np.int32, copy=False)), pa.array(pieces, pa.string())
    )
    return pa.ListArray.from_arrays(offsets, values)


def _decode(indices: pa.Array, values: list[str]) -> pa.Array:
    """A string column from small-integer codes, without a Python string per row."""
    return pa.DictionaryArray.from_arrays(indices, pa.array(values, pa.string())).dictionary_decode()


def _piece_index(text: TokenText, token_matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(a table of token texts, [windows, T] indices into it): one text per vocabulary id, vectorised,
    plus the windows whose byte-fallback tokens need their own incremental cut (appended to the table)."""
    vocab, index = np.unique(token_matrix, return_inverse=True)
    index = index.reshape(token_matrix.shape).astype(np.int32)
    pieces = [text.piece(int(i)) for i in vocab]
    broken = np.isin(token_matrix, [int(i) for i, p in zip(vocab, pieces) if _BROKEN in p])
    for row in np.flatnonzero(broken.any(axis=1)):
        index[row] = np.arange(len(pieces), len(pieces) + token_matrix.shape[1])
        pieces.extend(text(token_matrix[row].tolist()))
    return pieces, index
