"""Finalise: mining state -> the store's (features, exemplars) tables.

Per feature, the windows each source keeps, in this order (a window may sit in several sources):
- top: the top_k windows by max activation (those that activate at all);
- quantile: per_quantile windows from each of `quantiles` activation bins of the uniform pool of
  activating windows (windows already in top excluded);
- random: the first random_k windows of the uniform sample of all windows, whatever they are (a
  random window that is also a top window is KEPT, so the random sample stays unbiased);
- inactive: the first inactive_k windows of the whole uniform sample (random_k + inactive_pool) that
  peak at or below ACTIVE_FRACTION x the feature's max: real non-activating text;
- hard_negative: the candidates of `negatives` that pass its rule.

Splits follow the one rule of `splits` (groups of windows sharing a document or identical tokens,
dealt strongest source first so every split gets strong and weak windows and as many random windows
as top/quantile ones, as far as the groups allow). Every step is vectorised over features: no
Python loop runs per exemplar row.

Token text is cut from the decoded window, so tokens join back to the text exactly, word spaces of
SentencePiece-style tokenizers included (`TokenText`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from neuroscribe.records import ACTIVE_FRACTION, FeatureStats
from neuroscribe.runs.store import FEATURE_SCHEMA, exemplar_table, feature_row, list_column

from .mining import Miner, Slots, moment_stats, top_tokens
from .negatives import hard_negative_slots
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


SOURCES = ("top", "quantile", "random", "inactive", "hard_negative")  # the order rows are dealt in


@dataclass
class _Picked:
    """Rows one source keeps, all features at once: feature column, sort position within the feature's
    rows of this source, quantile bin (-1: none), which slots hold the activations and the slot index."""

    col: np.ndarray
    pos: np.ndarray
    quantile: np.ndarray
    slots: Slots
    slot: np.ndarray

    @classmethod
    def of(cls, mask: torch.Tensor, order: torch.Tensor, slots: Slots, pos=None, quantile=None) -> _Picked:
        col, i = mask.nonzero(as_tuple=True)
        pos = i if pos is None else pos[col, i]
        q = torch.full_like(i, -1) if quantile is None else quantile[col, i]
        return cls(col.numpy(), pos.numpy(), q.numpy(), slots, order[col, i].numpy())


def _select(miner: Miner, fmax: torch.Tensor, hard: tuple[np.ndarray, np.ndarray]) -> tuple[list[_Picked], list]:
    """Per source, the rows each feature keeps (module doc), and each feature's quantile boundaries."""
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
    starts = [n_valid * q // cfg.quantiles for q in range(cfg.quantiles + 1)]  # bin q: ranks [starts[q], starts[q+1])
    qbin = sum((act_rank >= s).long() for s in starts[1:-1])
    in_bin = [valid & (qbin == q) for q in range(cfg.quantiles)]
    quant = torch.zeros_like(valid)
    for member in in_bin:
        quant |= member & (member.cumsum(1) <= cfg.per_quantile)
    sorted_max = pool_max.gather(1, by_act).tolist()
    first = torch.cat(starts, 1).tolist()  # [F, quantiles + 1]
    boundaries = [  # each non-empty bin's lowest max
        tuple(sorted_max[f][at[q]] for q in range(cfg.quantiles) if at[q + 1] > at[q]) for f, at in enumerate(first)
    ]
    # the uniform sample: random = its first random_k; inactive = its first inactive_k quiet windows
    rand_order, rand_keys = miner.random.ordered()
    uniform = rand_keys != inf
    rand_max = miner.random.maxes.gather(1, rand_order)
    quiet = uniform & (fmax > 0).unsqueeze(1) & (rand_max <= ACTIVE_FRACTION * fmax[:, None])
    hard_col, hard_slot = hard
    hard_pos = np.arange(len(hard_col)) - np.searchsorted(hard_col, hard_col)
    picked = [
        _Picked.of(top_ok, top_order, miner.top),
        _Picked.of(quant, pool_order, miner.pool, pos=qbin * miner.pool.k + torch.arange(miner.pool.k), quantile=qbin),
        _Picked.of(uniform & (uniform.cumsum(1) <= cfg.random_k), rand_order, miner.random),
        _Picked.of(quiet & (quiet.cumsum(1) <= cfg.inactive_k), rand_order, miner.random),
        _Picked(hard_col, hard_pos, np.full(len(hard_col), -1), miner.hard, hard_slot),
    ]
    return picked, boundaries


def finalize(miner: Miner, tok) -> tuple[pa.Table, pa.Table]:
    """Turn mining state into the store's (features, exemplars) tables (module doc)."""
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
    picked, boundaries = _select(miner, fmax_t, hard_negative_slots(miner, window_ids, token_matrix))
    src = np.concatenate([np.full(len(p.col), i) for i, p in enumerate(picked)])
    col = np.concatenate([p.col for p in picked])
    slots = [p.slots for p in picked]
    slot = np.concatenate([p.slot for p in picked])
    wid_all = np.concatenate([p.slots.ids.numpy()[p.col, p.slot] for p in picked])
    keep = ~np.array([not m > 0 for m in fmax])[col]  # a dead feature keeps no exemplar
    order = np.lexsort((np.concatenate([p.pos for p in picked]), src, col))
    order = order[keep[order]]
    src, col, slot, wid = src[order], col[order], slot[order], wid_all[order]
    quantile = np.concatenate([p.quantile for p in picked])[order]
    row = np.searchsorted(window_ids, wid)
    docs = np.array([miner.window_docs[int(w)] for w in window_ids], dtype=np.int64).reshape(-1, 2)
    _, content = np.unique(token_matrix, axis=0, return_inverse=True)
    content = content.reshape(-1)
    split = assign_splits(col, docs[row, 0], docs[row, 1], content[row], src, len(cfg.splits))
    segment = np.flatnonzero(np.r_[True, (col[1:] != col[:-1]) | (src[1:] != src[:-1])])
    rank = np.arange(len(col)) - np.repeat(segment, np.diff(np.r_[segment, len(col)]))
    acts = torch.zeros(len(col), miner.window, dtype=torch.float32)
    for i, s in enumerate(slots):
        at = np.flatnonzero(src == i)
        if len(at):
            acts[torch.from_numpy(at)] = s.acts[torch.from_numpy(col[at]), torch.from_numpy(slot[at])]
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
    per_col = pa.array(np.asarray(col, dtype=np.int32))
    scalars = {
        "feature": _decode(per_col, [f.key for f in features]),
        "layer": np.array([f.layer for f in features], dtype=np.int32)[col],
        "kind": _decode(per_col, [f.kind for f in features]),
        "split": _decode(pa.array(split.astype(np.int32)), list(cfg.splits)),
        "source": _decode(pa.array(src.astype(np.int32)), list(SOURCES)),
        "rank": rank.astype(np.int32),
        "quantile": quantile.astype(np.int32),
        "window_id": wid,
        "doc_first": docs[row, 0],
        "doc_last": docs[row, 1],
    }
    pieces, index = _piece_index(text, token_matrix)
    flat = index[row].reshape(-1)
    offsets = pa.array(np.arange(0, len(wid) * miner.window + 1, miner.window, dtype=np.int32))
    exemplars = exemplar_table(
        scalars,
        pa.ListArray.from_arrays(offsets, pa.array(pieces, pa.string()).take(pa.array(flat))),
        list_column(token_matrix[row], pa.int32()),
        list_column(acts.numpy(), pa.float32()),
    )
    return pa.Table.from_pylist(feature_rows, FEATURE_SCHEMA), exemplars


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
