"""Which split each exemplar lands in: the one rule, for collected and planted features alike.

Within a feature, windows that touch a common document, or that hold identical token ids, form one
group, and a group always lands in one split, so neighbouring windows of one document and duplicated
text can never sit in explain and test at once. Groups are dealt in the order of their first row (rows
come strongest source first), each to the split where its rows leave every source's counts most even
relative to that source's total (or, with `weights`, to the share of it the protocol gives that
split: `protocols.Protocol.share`; a split whose share of a source is 0 never holds it: a group dealt
there leaves those rows out); ties go round robin from the split after the last one dealt, so
singleton groups are dealt like a stride. A feature whose windows all share one document ends up in
one split only: the scorers then call it insufficient instead of scoring a split without positives.

Vectorised over features (one numpy pass per group rank), so a store of 10^4 features with ~10^2
rows each is dealt in well under a second of Python.
"""

from __future__ import annotations

import numpy as np


def assign_splits(
    col: np.ndarray,
    doc_first: np.ndarray,
    doc_last: np.ndarray,
    content: np.ndarray,
    source: np.ndarray,
    n_splits: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Split index of each row. Rows are grouped by feature column `col` (contiguous, in row order);
    `content` is an id shared by windows of identical token ids; `source` a small integer code;
    `weights[split, source]` the share of a source each split should get (default: even). A row whose
    group lands in a split with no share of its source gets -1: it is left out."""
    if len(col) == 0:
        return np.zeros(0, np.int64)
    group, n_groups = _groups(col, doc_first, doc_last, content)
    n_sources = int(source.max()) + 1
    if weights is None:
        weights = np.full((n_splits, n_sources), 1.0 / n_splits)
    weights = np.asarray(weights, np.float64)[:, :n_sources]
    split = _deal(col, group, n_groups, source, n_splits, weights)[group]
    return np.where(weights[split, source] > 0, split, -1)


def _groups(col, doc_first, doc_last, content) -> tuple[np.ndarray, int]:
    """(global group id of each row, numbered by first row, features in order; the number of groups)."""
    n = len(col)
    span = np.int64(max(int(doc_last.max()), int(doc_first.max())) + 2)
    first, last = doc_first + col * span, doc_last + col * span  # features never overlap
    by_doc = np.lexsort((np.arange(n), last, first))
    reach = np.maximum.accumulate(last[by_doc])
    starts = np.ones(n, dtype=bool)
    starts[1:] = first[by_doc][1:] > reach[:-1]  # an interval sweep: overlapping document ranges chain
    label = np.empty(n, np.int64)
    label[by_doc] = np.cumsum(starts) - 1
    _, by_content = np.unique(col * (int(content.max()) + 1) + content, return_inverse=True)
    by_span = label.copy()
    while True:  # connected components of (document range) or (content): spread the smallest label
        smallest = np.full(n, n, np.int64)
        np.minimum.at(smallest, by_content, label)
        spread = smallest[by_content]
        smallest = np.full(n, n, np.int64)
        np.minimum.at(smallest, by_span, spread)
        spread = smallest[by_span]
        if (spread == label).all():
            break
        label = spread
    roots, first_row, inverse = np.unique(label, return_index=True, return_inverse=True)
    rank = np.empty(len(roots), np.int64)
    rank[np.argsort(first_row, kind="stable")] = np.arange(len(roots))
    return rank[inverse], len(roots)


def _deal(col, group, n_groups, source, n_splits, weights) -> np.ndarray:
    """Split of each group (module doc), sequential within a feature, vectorised across features."""
    n_sources = weights.shape[1]
    counts = np.zeros((n_groups, n_sources), np.int64)
    np.add.at(counts, (group, source), 1)
    gcol = np.zeros(n_groups, np.int64)
    gcol[group] = col
    features, feature_of = np.unique(gcol, return_inverse=True)
    totals = np.zeros((len(features), n_sources), np.int64)
    np.add.at(totals, feature_of, counts)
    starts = np.searchsorted(feature_of, np.arange(len(features)))  # groups are numbered feature by feature
    nth = np.arange(n_groups) - starts[feature_of]
    load = np.zeros((len(features), n_splits, n_sources), np.float64)
    turn = np.zeros(len(features), np.int64)
    out = np.zeros(n_groups, np.int64)
    for j in range(int(nth.max()) + 1):
        g = np.flatnonzero(nth == j)
        f, rows = feature_of[g], counts[g]
        quota = np.maximum(totals[f], 1)[:, None, :] * weights[None]  # [n, splits, sources]
        fill = np.divide(load[f] + rows[:, None, :], quota, out=np.zeros(quota.shape), where=quota > 0)
        share = np.where(rows[:, None, :] > 0, fill, 0)
        takes = ((rows[:, None, :] > 0) & (quota > 0)).any(2)  # the split keeps some row of the group
        cost = np.where(takes, share.sum(2), np.inf)  # [n, splits]
        rotation = (turn[f, None] + np.arange(n_splits)) % n_splits
        best = rotation[np.arange(len(g)), np.argmin(np.take_along_axis(cost, rotation, 1), 1)]
        load[f, best] += rows * (weights[best] > 0)
        turn[f] = (best + 1) % n_splits
        out[g] = best
    return out
