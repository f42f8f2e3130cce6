"""Hard negatives: windows that hold one of a feature's top tokens (the 3 most frequent tokens at the
peaks of its top windows) yet peak at <= negative_ratio x the feature's max.

They are found in the mining pass itself, so collect reads the corpus once: while mining, a window
becomes a candidate of a feature when it holds one of the feature's `HARD_WATCH` top tokens *so far*
and peaks low against the max so far; each feature keeps the candidates of lowest priority (a pure
function of seed, window and feature), a bounded number of slots (memory: features x slots). At the
end the rule is applied again with the final top tokens and max, and the first `hard_negatives`
candidates by priority that pass are kept.

What this gives up against a second pass over the corpus: a window read before one of the final top
tokens became a top token is not considered, so which windows are hard negatives can depend on the
order windows are read (shard order, number of ranks). Every kept one satisfies the rule exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .mining import Miner, top_tokens

TOP_TOKENS = 3  # the final rule's top tokens


def hard_negative_slots(miner: Miner, window_ids: np.ndarray, token_matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """(feature column, hard slot) of each kept hard negative, grouped by feature, best (lowest priority)
    first. `token_matrix[i]` holds the token ids of window `window_ids[i]` (sorted ids; every hard slot's
    window among them)."""
    need = miner.config.hard_negatives
    if need <= 0 or len(window_ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order, keys = miner.hard.ordered()
    ids = miner.hard.ids.gather(1, order)
    maxes = miner.hard.maxes.gather(1, order)
    fmax = miner.top.keys.max(1, keepdim=True).values.float()
    top = top_tokens(miner.top, TOP_TOKENS)  # [F, 3]
    top_ids = torch.where(miner.top.keys > 0, miner.top.ids, torch.full_like(miner.top.ids, -2))
    live = keys != float("inf")
    rows = np.searchsorted(window_ids, ids.clamp(min=0).numpy())
    held = torch.from_numpy(token_matrix[np.minimum(rows, len(window_ids) - 1)]).long()  # [F, S, T]
    holds = torch.zeros_like(live)
    for j in range(top.shape[1]):  # one top token at a time keeps the comparison at [F, S, T]
        holds |= (held == top[:, j].view(-1, 1, 1)).any(2) & (top[:, j : j + 1] >= 0)
    in_top = (ids.unsqueeze(2) == top_ids.unsqueeze(1)).any(2)
    ok = live & holds & ~in_top & (maxes <= miner.config.negative_ratio * fmax) & (fmax > 0)
    keep = ok & (ok.cumsum(1) <= need)
    col, pos = keep.nonzero(as_tuple=True)
    return col.numpy(), order[col, pos].numpy()
