"""Finalise: mining state -> the store's (features, exemplars) tables.

Per feature, the windows each source keeps are chosen in a fixed order (top, quantile, random, hard
negative), splits are assigned, token text is cut, and everything is laid out as Arrow columns
without a per-row Python loop where the data is large.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import torch

from neuroscribe.records import FeatureStats
from neuroscribe.runs.store import FEATURE_SCHEMA, exemplar_table, feature_row, list_column

from .mining import Miner, moment_stats
from .negatives import HardNegatives, top_token_ids


class TokenText:
    """Readable per-token text, memoised per token id. The subject's special tokens get look-alike
    brackets so they can never act as chat control tokens in a later prompt
    (e.g. <|im_start|> -> ‹|im_start|›, [INST] -> ⟦INST⟧)."""

    def __init__(self, tok):
        self.tok, self.memo = tok, {}
        added = getattr(tok, "added_tokens_decoder", {})
        self.special = set(tok.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}

    def piece(self, i: int) -> str:
        if i not in self.memo:
            if i in self.special:
                self.memo[i] = self.tok.convert_ids_to_tokens(i).translate(str.maketrans("<>[]", "‹›⟦⟧"))
            else:
                self.memo[i] = self.tok.decode([i])
        return self.memo[i]

    def __call__(self, ids) -> tuple[str, ...]:
        return tuple(self.piece(i) for i in ids)


def _feature_selection(miner: Miner, negatives: HardNegatives):
    """Which windows each feature keeps, in order: yields (col, [(source, quantile, window id, act ref)]).

    An act ref is ("top"|"pool"|"random", slot) into the miner's tensors, or ("neg", i). Windows are
    deduplicated across sources (top > quantile > random > hard negative)."""
    cfg = miner.config
    top_order, top_keys = miner.top.ordered()
    pool_order, pool_keys = miner.pool.ordered()
    rand_order, rand_keys = miner.random.ordered()
    top_ids, pool_ids, rand_ids = (
        s.ids.gather(1, o).tolist()
        for s, o in ((miner.top, top_order), (miner.pool, pool_order), (miner.random, rand_order))
    )
    pool_max = miner.pool.maxes.gather(1, pool_order).tolist()
    top_order, pool_order, rand_order = top_order.tolist(), pool_order.tolist(), rand_order.tolist()
    top_keys, pool_keys, rand_keys = top_keys.tolist(), pool_keys.tolist(), rand_keys.tolist()
    for col in range(len(miner.features)):
        used: set[int] = set()
        picked = []

        def take(source, quantile, entries):
            for wid, ref in entries:
                if wid >= 0 and wid not in used:
                    used.add(wid)
                    picked.append((source, quantile, wid, ref))

        take("top", -1, [(w, ("top", s)) for w, k, s in zip(top_ids[col], top_keys[col], top_order[col]) if k > 0])
        # activating pool, lowest priority first; cut by activation rank into quantile bins
        pool = [
            (m, i)
            for i, (w, k, m) in enumerate(zip(pool_ids[col], pool_keys[col], pool_max[col]))
            if k != float("inf") and w not in used
        ]
        by_act = sorted(pool)
        bins = [
            by_act[len(by_act) * q // cfg.quantiles : len(by_act) * (q + 1) // cfg.quantiles]
            for q in range(cfg.quantiles)
        ]
        boundaries = tuple(b[0][0] for b in bins if b)
        for q, members in enumerate(bins):
            first = sorted(i for _, i in members)[: cfg.per_quantile]  # i is the priority order
            take("quantile", q, [(pool_ids[col][i], ("pool", pool_order[col][i])) for i in first])
        take(
            "random",
            -1,
            [
                (w, ("random", s))
                for w, k, s in zip(rand_ids[col], rand_keys[col], rand_order[col])
                if k != float("inf")
            ],
        )
        take("hard_negative", -1, [(w, ("neg", i)) for i, w in enumerate(negatives.windows.get(col, []))])
        yield col, picked, boundaries


def finalize(miner: Miner, tok, negatives: HardNegatives) -> tuple[pa.Table, pa.Table]:
    """Turn mining state into the store's (features, exemplars) tables, splits assigned by stride
    within each source so every split gets strong and weak exemplars alike."""
    cfg = miner.config
    stats = {k: v.tolist() for k, v in moment_stats(miner.moments).items()}
    fmax = miner.top.keys.max(1).values.tolist()
    n_tok = miner.moments[:, 0].long().tolist()
    n_active = miner.n_active.tolist()
    text = TokenText(tok)
    tops = top_token_ids(miner, 5)
    scalars: dict[str, list] = {
        k: [] for k in ("feature", "layer", "kind", "split", "source", "rank", "quantile", "window_id")
    }
    refs: list[tuple[str, int, int]] = []
    feature_rows = []
    for col, picked, boundaries in _feature_selection(miner, negatives):
        fid = miner.features[col]
        dead = not fmax[col] > 0
        if dead:
            picked, boundaries = [], ()
        rank_in: Counter = Counter()
        for source, quantile, wid, (kind, slot) in picked:
            i = rank_in[source]
            rank_in[source] += 1
            for name, value in (
                ("feature", fid.key),
                ("layer", fid.layer),
                ("kind", fid.kind),
                ("split", cfg.splits[i % len(cfg.splits)]),
                ("source", source),
                ("rank", i),
                ("quantile", quantile),
                ("window_id", wid),
            ):
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
    windows = {**negatives.tokens, **miner.window_tokens}
    unique = np.unique(wids)
    token_matrix = np.array([windows[int(w)] for w in unique], dtype=np.int32).reshape(len(unique), miner.window)
    token_ids = token_matrix[np.searchsorted(unique, wids)]
    vocab = np.unique(token_ids)
    strings = pa.array([text.piece(int(i)) for i in vocab], pa.string()).take(
        pa.array(np.searchsorted(vocab, token_ids.reshape(-1)))
    )
    offsets = pa.array(np.arange(0, token_ids.size + 1, miner.window, dtype=np.int32))
    exemplars = exemplar_table(
        scalars,
        pa.ListArray.from_arrays(offsets, strings),
        list_column(token_ids, pa.int32()),
        list_column(acts, pa.float32()),
    )
    return pa.Table.from_pylist(feature_rows, FEATURE_SCHEMA), exemplars


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
