"""`Slots`: the k best (key, window id, token activations) per feature, in fixed-size tensors: the unit
of the miner's bounded state (`mining`, `intervals`). Merging two Slots gives what one would hold
after seeing both streams: selection depends only on the keys, ties broken by lower window id."""

from __future__ import annotations

import torch


def _select(keys: torch.Tensor, ids: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the k best keys per row, ties broken by lower id; rows are independent."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    order = torch.argsort(keys.gather(1, by_id), dim=1, descending=largest, stable=True)
    return by_id.gather(1, order)[:, :k]


class Slots:
    """k best (key, window id, token activations) per feature; `largest` picks the ordering.

    Slots are kept unordered: a batch only writes the slots it evicts, so the cost of an update
    is proportional to how many candidates get in, not to the size of the state.
    """

    def __init__(self, n_features: int, k: int, window: int, largest: bool, extra: bool = False, peaks: bool = False):
        self.fill = float("-inf") if largest else float("inf")
        self.largest, self.k = largest, k
        self.keys = torch.full((n_features, k), self.fill, dtype=torch.float64)
        self.ids = torch.full((n_features, k), -1, dtype=torch.int64)
        self.acts = torch.zeros(n_features, k, window, dtype=torch.float32)
        self.maxes = torch.zeros(n_features, k, dtype=torch.float32) if extra else None
        self.peaks = torch.full((n_features, k), -1, dtype=torch.int64) if peaks else None  # token id at the peak

    def offer(
        self,
        keys: torch.Tensor,
        ids: torch.Tensor,
        acts_of,
        maxes: torch.Tensor | None = None,
        peaks: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Offer B candidates per feature: keys/ids (and maxes, peak token ids) [F, B]; acts_of(rows, cols)
        -> [n, T] for candidate (key row, candidate column) pairs. `rows`, when given, names the slot row
        each key row offers to (distinct rows; default: key row i offers to slot row i)."""
        if self.k == 0:
            return
        mine = self.keys if rows is None else self.keys[rows]
        worst = mine.min(1, keepdim=True).values if self.largest else mine.max(1, keepdim=True).values
        better = (keys >= worst) if self.largest else (keys <= worst)
        sel = better.any(dim=1).nonzero().flatten()
        if sel.numel() == 0:
            return
        dest = sel if rows is None else rows[sel]
        all_keys = torch.cat([self.keys[dest], keys[sel].to(torch.float64)], dim=1)
        all_ids = torch.cat([self.ids[dest], ids[sel]], dim=1)
        pick = _select(all_keys, all_ids, self.k, self.largest)
        chosen = torch.zeros_like(all_keys, dtype=torch.bool).scatter_(1, pick, True)
        # pair the j-th evicted old slot of a row with the j-th entering candidate of that row
        r_out, slot = (~chosen[:, : self.k]).nonzero(as_tuple=True)
        r_in, cand = chosen[:, self.k :].nonzero(as_tuple=True)
        if r_in.numel() == 0:
            return
        feat, at = sel[r_in], dest[r_in]
        self.keys[at, slot] = keys[feat, cand].to(torch.float64)
        self.ids[at, slot] = ids[feat, cand]
        self.acts[at, slot] = acts_of(feat, cand)
        if self.maxes is not None:
            self.maxes[at, slot] = maxes[feat, cand]
        if self.peaks is not None:
            self.peaks[at, slot] = peaks[feat, cand]

    def absorb(self, other: Slots) -> None:
        """Merge another miner's slots (same features) into these."""
        self.offer(other.keys, other.ids, lambda f, c: other.acts[f, c], other.maxes, other.peaks)

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot order best first [F, k], keys in that order), ties by lower window id."""
        order = _select(self.keys, self.ids, self.k, self.largest)
        return order, self.keys.gather(1, order)

    def state(self) -> dict:
        return {"keys": self.keys, "ids": self.ids, "acts": self.acts, "maxes": self.maxes, "peaks": self.peaks}

    def load(self, state: dict) -> None:
        self.keys, self.ids, self.acts, self.maxes = state["keys"], state["ids"], state["acts"], state["maxes"]
        self.peaks = state["peaks"]
