"""Hard negatives: windows that hold one of a feature's top tokens (the 3 most frequent tokens at the
peaks of its top windows) yet peak at <= negative_ratio x the feature's max. Other-context windows
(Anthropic's "top-activating tokens in other contexts"): windows, not among the top ones, that hold
one of those tokens, whatever they peak at. Both are found the same way.

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


def top_token_slots(
    miner: Miner, window_ids: np.ndarray, token_matrix: np.ndarray, capped: bool = True
) -> tuple[np.ndarray, ...]:
    """(feature column, slot) of each kept hard negative (`capped`) or other-context window, grouped by
    feature, best (lowest priority) first. `token_matrix[i]` holds the token ids of window `window_ids[i]`
    (sorted ids; every slot's window among them)."""
    slots, need = (miner.hard, miner.config.hard_negatives) if capped else (miner.context, miner.config.other_context)
    if need <= 0 or len(window_ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order, keys = slots.ordered()
    ids = slots.ids.gather(1, order)
    maxes = slots.maxes.gather(1, order)
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
    ok = live & holds & ~in_top & (fmax > 0)
    if capped:
        ok &= maxes <= miner.config.negative_ratio * fmax
    keep = ok & (ok.cumsum(1) <= need)
    col, pos = keep.nonzero(as_tuple=True)
    return col.numpy(), order[col, pos].numpy()


def out_of_context_tokens(miner: Miner, n: int) -> np.ndarray:
    """[F, n] each feature's top-activating tokens (-1 pad): the distinct token ids of its top windows
    ranked by the highest activation they reach there (ties: lower id), only those that activate (> 0).
    collect then reads each alone through the subject (Anthropic's out-of-context exemplars)."""
    F = len(miner.features)
    out = np.full((F, n), -1, np.int64)
    if n <= 0:
        return out
    ids = miner.top.ids.numpy()
    live = miner.top.keys.numpy() > 0
    token_of = miner.window_tokens
    blank = (-1,) * miner.window
    tokens = np.array(
        [[token_of.get(int(w), blank) if ok else blank for w, ok in zip(r, m)] for r, m in zip(ids, live)]
    )
    acts = miner.top.acts.numpy().reshape(F, -1)
    tokens = tokens.reshape(F, -1)
    acts = np.where((tokens >= 0) & (acts > 0), acts, -np.inf)
    col = np.repeat(np.arange(F), tokens.shape[1])
    by = np.lexsort((tokens.ravel(), -acts.ravel(), col))  # per feature, strongest first
    tok, act, col = tokens.ravel()[by], acts.ravel()[by], col[by]
    _, first = np.unique(col * (int(tokens.max()) + 2) + tok + 1, return_index=True)
    first = np.sort(first)
    first = first[np.isfinite(act[first])]
    col, tok = col[first], tok[first]
    nth = np.arange(len(col)) - np.searchsorted(col, col)
    keep = nth < n
    out[col[keep], nth[keep]] = tok[keep]
    return out
