"""Activation-interval sampling in one streaming pass, before the feature's max is known.

Anthropic's protocol draws exemplars from equal-width intervals of (0, max]. The max is only known at
the end, so each feature keeps a fine grid instead: `FINE` x intervals bins of width scale / bins,
where `scale` is the smallest power of two >= the max seen so far, and in each bin the windows of
lowest priority (a pure function of seed, window and feature: a uniform sample of the bin). When the
max passes the scale, the scale doubles (or more) and bins merge pairwise: bin i at scale s is exactly
the union of bins 2i and 2i+1 at s/2, and the lowest priorities of a union lie among the lowest of its
parts, so the state is exactly what it would be had the final scale been known from the start — for
any read order, batch size or number of ranks (`absorb`).

At the end (`pick`) interval j of the final max M holds the windows with j M / I < max <= (j+1) M / I;
each draws the `per_interval` windows of lowest priority among the kept windows of the fine bins it
covers that fall inside it. Since an interval spans 2-4 fine bins, it always covers one whole; a
bin it only partly covers contributes the kept windows that fall in it, which is exact unless that
bin's sample is crowded by windows outside the interval (documented approximation at interval edges).
Memory: features x FINE x intervals x per_interval windows.
"""

from __future__ import annotations

import torch

from .slots import Slots

FINE = 4  # fine bins per interval


class IntervalSlots:
    def __init__(self, n_features: int, intervals: int, per_interval: int, window: int):
        self.intervals, self.bins = intervals, FINE * intervals
        self.slots = Slots(n_features * self.bins, per_interval, window, largest=False, extra=True)
        self.scale = torch.zeros(n_features, dtype=torch.float64)  # 0: nothing activating seen yet

    def _bin(self, feature: torch.Tensor, maxes: torch.Tensor) -> torch.Tensor:
        at = (maxes.double() * self.bins / self.scale[feature]).floor().long()
        return at.clamp(0, self.bins - 1)

    def offer(self, prio: torch.Tensor, ids: torch.Tensor, maxes: torch.Tensor, acts_of) -> None:
        """Offer a batch: prio/ids/maxes [F, B]; acts_of(features, columns) -> [n, T]. Windows that do
        not activate (max <= 0) are no interval's."""
        if self.slots.k == 0 or self.bins == 0:
            return
        f, b = (maxes > 0).nonzero(as_tuple=True)
        if f.numel():
            self._grow(maxes.clamp(min=0).max(1).values)
            self._offer_pairs(f, prio[f, b], ids[f, b], maxes[f, b], lambda i: acts_of(f[i], b[i]))

    def _grow(self, seen_max: torch.Tensor) -> None:
        """Raise each feature's scale to the power of two >= `seen_max`, merging its fine bins."""
        grow = (seen_max.double() > self.scale).nonzero().flatten()
        if grow.numel() == 0:
            return
        rows = (grow.unsqueeze(1) * self.bins + torch.arange(self.bins)).flatten()
        kept = self._kept(self.slots, rows)
        self.slots.keys[rows], self.slots.ids[rows] = self.slots.fill, -1
        self.scale[grow] = torch.exp2(torch.ceil(torch.log2(seen_max[grow].double())))
        self._offer_kept(*kept)

    def _kept(self, slots: Slots, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(feature, key, window id, max, activations [n, T]) of every window kept in slot `rows`."""
        row, col = (slots.keys[rows] != slots.fill).nonzero(as_tuple=True)
        at = rows[row]
        return at // self.bins, slots.keys[at, col], slots.ids[at, col], slots.maxes[at, col], slots.acts[at, col]

    def _offer_kept(self, feature, keys, ids, maxes, acts) -> None:
        self._offer_pairs(feature, keys, ids, maxes, lambda i: acts[i])

    def _offer_pairs(self, feature, keys, ids, maxes, acts_of_pair) -> None:
        """Offer (feature, window) candidates, each to its fine bin at the current scale."""
        if feature.numel() == 0:
            return
        row = feature * self.bins + self._bin(feature, maxes)
        rows, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        col = torch.empty_like(order)
        col[order] = torch.arange(len(order)) - starts.repeat_interleave(counts)
        width = int(counts.max())
        pair = torch.full((len(rows), width), -1, dtype=torch.int64)
        pair[inverse, col] = torch.arange(len(row))
        k = torch.full((len(rows), width), self.slots.fill, dtype=torch.float64)
        k[inverse, col] = keys.double()
        w = torch.full((len(rows), width), -1, dtype=torch.int64)
        w[inverse, col] = ids
        m = torch.zeros(len(rows), width, dtype=torch.float32)
        m[inverse, col] = maxes.float()
        self.slots.offer(k, w, lambda r, c: acts_of_pair(pair[r, c]), m, rows=rows)

    def absorb(self, other: IntervalSlots) -> None:
        """Merge another miner's interval slots (same features): exact (module doc)."""
        self._grow(other.scale)
        self._offer_kept(*self._kept(other.slots, torch.arange(other.slots.keys.shape[0])))

    def pick(self, fmax: torch.Tensor, exclude: torch.Tensor, per_interval: int) -> tuple[torch.Tensor, ...]:
        """(feature, slot row, slot column, interval) of the windows each feature keeps, per interval the
        `per_interval` of lowest priority (ties: lower window id) that are not in `exclude` [F, E] (the
        top windows), ordered by feature, interval, priority."""
        s, F = self.slots, len(self.scale)
        keys = s.keys.view(F, -1)
        ids, maxes = s.ids.view(F, -1), s.maxes.view(F, -1)
        live = (keys != s.fill) & ~(ids.unsqueeze(2) == exclude.unsqueeze(1)).any(2) & (fmax[:, None] > 0)
        interval = torch.ceil(maxes.double() * self.intervals / fmax[:, None].double().clamp(min=1e-30)).long() - 1
        interval = interval.clamp(0, self.intervals - 1)
        big = self.intervals + 1
        order = torch.argsort(ids, dim=1, stable=True)  # ties by lower id, then priority, then interval
        for key in (keys, torch.where(live, interval, torch.full_like(interval, big))):
            order = order.gather(1, torch.argsort(key.gather(1, order), dim=1, stable=True))
        iv = torch.where(live, interval, torch.full_like(interval, big)).gather(1, order)
        first = torch.ones_like(iv, dtype=torch.bool)
        first[:, 1:] = iv[:, 1:] != iv[:, :-1]
        run_start = torch.cummax(torch.where(first, torch.arange(iv.shape[1]).expand_as(iv), 0), 1).values
        nth = torch.arange(iv.shape[1]) - run_start
        keep = (iv < big) & (nth < per_interval)
        feature, pos = keep.nonzero(as_tuple=True)
        flat = order[feature, pos]
        return feature, feature * self.bins + flat // s.k, flat % s.k, iv[feature, pos]

    def state(self) -> dict:
        return {"slots": self.slots.state(), "scale": self.scale}

    def load(self, state: dict) -> None:
        self.slots.load(state["slots"])
        self.scale = state["scale"]
