"""The split rule (`distill.splits`), vectorised over features: groups never straddle splits, singleton
groups deal evenly per source, and dealing many features at once equals dealing each alone."""

from __future__ import annotations

import numpy as np

from neuroscribe.distill.collect.splits import assign_splits


def _feature(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    first = rng.integers(0, 40, n)
    return {
        "doc_first": first,
        "doc_last": first + (rng.random(n) < 0.2),  # some windows span two documents
        "content": rng.integers(0, n * 2, n),  # identical ids now and then
        "source": np.sort(rng.integers(0, 3, n)),  # rows come source by source, strongest first
    }


def test_groups_share_a_split_and_features_do_not_interact():
    rng = np.random.default_rng(0)
    features = [_feature(rng, int(n)) for n in rng.integers(5, 60, 25)]
    col = np.concatenate([np.full(len(f["source"]), i) for i, f in enumerate(features)])
    together = assign_splits(col, *(np.concatenate([f[k] for f in features]) for k in _feature_keys()), 3)
    at = 0
    for f in features:
        n = len(f["source"])
        alone = assign_splits(np.zeros(n, np.int64), *(f[k] for k in _feature_keys()), 3)
        assert (together[at : at + n] == alone).all()  # one pass over all features = each feature alone
        at += n
        for i in range(n):
            for j in range(n):
                overlap = f["doc_first"][i] <= f["doc_last"][j] and f["doc_first"][j] <= f["doc_last"][i]
                if overlap or f["content"][i] == f["content"][j]:
                    assert alone[i] == alone[j], (i, j)


def test_singleton_groups_deal_every_source_evenly():
    n = 31
    source = np.array([0] * 12 + [1] * 9 + [2] * 10)
    split = assign_splits(np.zeros(n, np.int64), np.arange(n), np.arange(n), np.arange(n), source, 3)
    for s in range(3):
        counts = np.bincount(split[source == s], minlength=3)
        assert counts.max() - counts.min() <= 1, (s, counts)


def test_one_document_gives_one_split():
    split = assign_splits(
        np.zeros(6, np.int64), np.zeros(6, np.int64), np.zeros(6, np.int64), np.arange(6), np.zeros(6, np.int64), 3
    )
    assert len(set(split.tolist())) == 1


def _feature_keys() -> tuple[str, ...]:
    return ("doc_first", "doc_last", "content", "source")
