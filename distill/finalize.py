"""Finalise: mining state -> the store's (features, exemplars) tables.

Per feature, the windows each source keeps, in this order (a window may sit in several sources):
- top: the top_k windows by max activation (those that activate at all);
- quantile: per_quantile windows from each of `quantiles` activation bins of the uniform pool of
  activating windows (windows already in top excluded);
- random: the first random_k windows of the uniform sample of all windows, whatever they are (a
  random window that is also a top window is KEPT, so the random sample stays unbiased);
- inactive: the first inactive_k windows of the whole uniform sample (random_k + inactive_pool) that
  peak at or below ACTIVE_FRACTION x the feature's max: real non-activating text;
- hard_negative: the pass in `negatives`.

Splits. Within a feature, windows that touch a common document, or that hold identical token ids,
form one group, and a group always lands in one split, so neighbouring windows of one document and
duplicated text can never sit in explain and test at once. Groups are dealt in the source order above
(strongest first), each to the split where it leaves the per-source counts most even (`deal_groups`), so
every split gets strong and weak windows and as many random windows as top/quantile ones, as far as
the groups allow. A feature whose windows all come from one document ends up with one split only: the
scorers then call it insufficient instead of scoring it on a split without positives.

Token text is cut from the decoded window, so tokens join back to the text exactly, word spaces of
SentencePiece-style tokenizers included (`TokenText`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import torch

from neuroscribe.records import ACTIVE_FRACTION, FeatureStats
from neuroscribe.runs.store import FEATURE_SCHEMA, exemplar_table, feature_row, list_column

from .mining import Miner, moment_stats
from .negatives import HardNegatives, top_token_ids

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


def group_windows(wids: list[int], docs: dict[int, tuple[int, int]], tokens: dict[int, tuple[int, ...]]) -> list[int]:
    """Group index of each window (first-seen order): windows sharing a document or identical token ids
    are one group (union-find over the feature's own windows, so it costs nothing per corpus window)."""
    parent = list(range(len(wids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_content: dict[tuple[int, ...], int] = {}
    spans = sorted(range(len(wids)), key=lambda i: docs[wids[i]])
    reach, last = -1, -1
    for i in spans:  # interval sweep: overlapping document ranges chain into one group
        first_doc, last_doc = docs[wids[i]]
        if last >= 0 and first_doc <= reach:
            union(last, i)
        if last_doc > reach:
            reach = last_doc
        last = i
    for i, w in enumerate(wids):
        seen = by_content.setdefault(tokens[w], i)
        if seen != i:
            union(seen, i)
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(wids))]


def deal_groups(group: list[int], sources: list[str], n_splits: int) -> list[int]:
    """Split index of each group: groups in first-seen order (strongest first), each to the split where
    its rows leave every source's counts most even (relative to that source's total); ties go round
    robin, so singleton groups are dealt like a stride."""
    totals = Counter(sources)
    rows: dict[int, Counter] = {}
    for g, s in zip(group, sources):
        rows.setdefault(g, Counter())[s] += 1
    load = [Counter() for _ in range(n_splits)]
    out, turn = [], 0
    for g in range(len(rows)):
        order = [(turn + j) % n_splits for j in range(n_splits)]
        costs = {i: sum((load[i][s] + n) / totals[s] for s, n in rows[g].items()) for i in order}
        best = min(order, key=lambda i: (costs[i], order.index(i)))
        load[best].update(rows[g])
        out.append(best)
        turn = (best + 1) % n_splits
    return out


def _feature_selection(miner: Miner, negatives: HardNegatives):
    """Per feature, the windows each source keeps (module doc), in order: yields
    (col, [(source, quantile, window id, act ref)], quantile boundaries). An act ref is
    ("top"|"pool"|"random", slot) into the miner's tensors, or ("neg", i)."""
    cfg = miner.config
    top_order, top_keys = miner.top.ordered()
    pool_order, pool_keys = miner.pool.ordered()
    rand_order, rand_keys = miner.random.ordered()
    top_ids, pool_ids, rand_ids = (
        s.ids.gather(1, o).tolist()
        for s, o in ((miner.top, top_order), (miner.pool, pool_order), (miner.random, rand_order))
    )
    pool_max = miner.pool.maxes.gather(1, pool_order).tolist()
    rand_max = miner.random.maxes.gather(1, rand_order).tolist()
    fmax = miner.top.keys.max(1).values.tolist()
    top_order, pool_order, rand_order = top_order.tolist(), pool_order.tolist(), rand_order.tolist()
    top_keys, pool_keys, rand_keys = top_keys.tolist(), pool_keys.tolist(), rand_keys.tolist()
    for col in range(len(miner.features)):
        picked = [("top", -1, w, ("top", s)) for w, k, s in zip(top_ids[col], top_keys[col], top_order[col]) if k > 0]
        in_top = {w for _, _, w, _ in picked}
        # activating pool, lowest priority first; cut by activation rank into quantile bins
        pool = [
            (m, i)
            for i, (w, k, m) in enumerate(zip(pool_ids[col], pool_keys[col], pool_max[col]))
            if k != float("inf") and w not in in_top
        ]
        by_act = sorted(pool)
        bins = [
            by_act[len(by_act) * q // cfg.quantiles : len(by_act) * (q + 1) // cfg.quantiles]
            for q in range(cfg.quantiles)
        ]
        boundaries = tuple(b[0][0] for b in bins if b)
        for q, members in enumerate(bins):
            for i in sorted(i for _, i in members)[: cfg.per_quantile]:  # i is the priority order
                picked.append(("quantile", q, pool_ids[col][i], ("pool", pool_order[col][i])))
        uniform = [
            (w, s, m)
            for w, k, s, m in zip(rand_ids[col], rand_keys[col], rand_order[col], rand_max[col])
            if k != float("inf")
        ]
        picked += [("random", -1, w, ("random", s)) for w, s, _ in uniform[: cfg.random_k]]
        quiet = [(w, s) for w, s, m in uniform if fmax[col] > 0 and m <= ACTIVE_FRACTION * fmax[col]]
        picked += [("inactive", -1, w, ("random", s)) for w, s in quiet[: cfg.inactive_k]]
        picked += [("hard_negative", -1, w, ("neg", i)) for i, w in enumerate(negatives.windows.get(col, []))]
        yield col, picked, boundaries


def finalize(miner: Miner, tok, negatives: HardNegatives) -> tuple[pa.Table, pa.Table]:
    """Turn mining state into the store's (features, exemplars) tables (module doc)."""
    cfg = miner.config
    stats = {k: v.tolist() for k, v in moment_stats(miner.moments).items()}
    fmax = miner.top.keys.max(1).values.tolist()
    n_tok = miner.moments[:, 0].long().tolist()
    n_active = miner.n_active.tolist()
    text = TokenText(tok)
    tops = top_token_ids(miner, 5)
    tokens = {**{w: x.token_ids for w, x in negatives.held.items()}, **miner.window_tokens}
    docs = {**{w: x.doc_span for w, x in negatives.held.items()}, **miner.window_docs}
    names = ("feature", "layer", "kind", "split", "source", "rank", "quantile", "window_id", "doc_first", "doc_last")
    scalars: dict[str, list] = {k: [] for k in names}
    refs: list[tuple[str, int, int]] = []
    feature_rows = []
    for col, picked, boundaries in _feature_selection(miner, negatives):
        fid = miner.features[col]
        dead = not fmax[col] > 0
        if dead:
            picked, boundaries = [], ()
        group = group_windows([w for _, _, w, _ in picked], docs, tokens)
        split_of = deal_groups(group, [source for source, *_ in picked], len(cfg.splits))
        rank_in: Counter = Counter()
        for (source, quantile, wid, (kind, slot)), g in zip(picked, group):
            values = (
                fid.key,
                fid.layer,
                fid.kind,
                cfg.splits[split_of[g]],
                source,
                rank_in[source],
                quantile,
                wid,
                docs[wid][0],
                docs[wid][1],
            )
            rank_in[source] += 1
            for name, value in zip(names, values):
                scalars[name].append(value)
            refs.append((kind, col, slot))
        stats_col = FeatureStats(
            max_activation=max(fmax[col], 0.0),
            mean=stats["mean"][col],
            variance=stats["variance"][col],
            skewness=stats["skewness"][col],
            kurtosis=stats["kurtosis"][col],
            n_tokens=n_tok[col],
            frac_active=n_active[col] / max(n_tok[col], 1),
            quantile_boundaries=tuple(boundaries),
        )
        feature_rows.append(feature_row(fid, stats_col, dead, () if dead else text(tops[col])))
    acts = _gather_acts(miner, negatives, refs)
    wids = np.array(scalars["window_id"], dtype=np.int64)
    unique = np.unique(wids)
    token_matrix = np.array([tokens[int(w)] for w in unique], dtype=np.int32).reshape(len(unique), miner.window)
    row_of = np.searchsorted(unique, wids)
    pieces, index = _piece_index(text, token_matrix)
    flat = index[row_of].reshape(-1)
    offsets = pa.array(np.arange(0, len(wids) * miner.window + 1, miner.window, dtype=np.int32))
    exemplars = exemplar_table(
        scalars,
        pa.ListArray.from_arrays(offsets, pa.array(pieces, pa.string()).take(pa.array(flat))),
        list_column(token_matrix[row_of], pa.int32()),
        list_column(acts, pa.float32()),
    )
    return pa.Table.from_pylist(feature_rows, FEATURE_SCHEMA), exemplars


def _piece_index(text: TokenText, token_matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(a table of token texts, [windows, T] indices into it): one text per vocabulary id, vectorised,
    plus the windows whose byte-fallback tokens need their own incremental cut (appended to the table)."""
    vocab, index = np.unique(token_matrix, return_inverse=True)
    index = index.reshape(token_matrix.shape).astype(np.int64)
    pieces = [text.piece(int(i)) for i in vocab]
    broken = np.isin(token_matrix, [int(i) for i, p in zip(vocab, pieces) if _BROKEN in p])
    for row in np.flatnonzero(broken.any(axis=1)):
        index[row] = np.arange(len(pieces), len(pieces) + token_matrix.shape[1])
        pieces.extend(text(token_matrix[row].tolist()))
    return pieces, index


def _gather_acts(miner: Miner, negatives: HardNegatives, refs: list[tuple[str, int, int]]) -> np.ndarray:
    out = torch.zeros(len(refs), miner.window, dtype=torch.float32)
    for kind, slots in (("top", miner.top), ("pool", miner.pool), ("random", miner.random)):
        idx = [i for i, r in enumerate(refs) if r[0] == kind]
        if idx:
            cols = torch.tensor([refs[i][1] for i in idx])
            which = torch.tensor([refs[i][2] for i in idx])
            out[torch.tensor(idx)] = slots.acts[cols, which]
    for i, (kind, col, j) in enumerate(refs):
        if kind == "neg":
            out[i] = negatives.acts[col][j]
    return out.numpy()
