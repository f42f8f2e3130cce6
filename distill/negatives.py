"""Hard negatives: windows that contain one of a feature's top tokens (the tokens at the peaks of its
top windows) yet peak at <= negative_ratio x the feature's max.

They need the final top tokens, so they come from a second, bounded pass on rank 0 after mining:
candidates are picked from token ids alone (no forward pass), per feature the 2 x hard_negatives
windows of lowest priority (a pure function of seed, window and feature) that hold a top token;
then only those candidate windows are run through the model. Token ids are kept only for windows
some feature still holds as a candidate, so memory stays bounded by features x slots.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from neuroscribe.corpus import Window

from .mining import Miner, window_priorities


def top_token_ids(miner: Miner, n: int = 3) -> list[list[int]]:
    """Per feature, the most frequent tokens at the peaks of its top windows (ties: stronger window first).

    Slots are read best-first so the answer does not depend on slot layout (which differs after a merge)."""
    order, keys = miner.top.ordered()
    ids = miner.top.ids.gather(1, order).tolist()
    peaks = miner.top.acts.argmax(-1).gather(1, order).tolist()
    keys = keys.tolist()
    out = []
    for col in range(len(miner.features)):
        counts = Counter(
            miner.window_tokens[w][p] for w, k, p in zip(ids[col], keys[col], peaks[col]) if w >= 0 and k > 0
        )
        out.append([t for t, _ in counts.most_common(n)])  # most_common keeps first-seen order on ties
    return out


@dataclass
class HardNegatives:
    """Per feature column, accepted hard negatives best first: window ids and their activations."""

    windows: dict[int, list[int]] = field(default_factory=dict)
    acts: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    held: dict[int, Window] = field(default_factory=dict)  # the candidate windows still held, by id


def hard_negatives(
    miner: Miner,
    windows: Iterable[Window],
    forward: Callable[[list[tuple[int, ...]]], torch.Tensor],
    batch_size: int = 16,
    progress: bool = False,
) -> HardNegatives:
    """The hard-negative pass (module doc). `windows` streams the corpus again; `forward(token_ids)`
    returns [B, T, F] activations for a batch of windows."""
    cfg = miner.config
    need = cfg.hard_negatives
    result = HardNegatives()
    if need <= 0:
        return result
    by_token: dict[int, list[int]] = {}
    for col, toks in enumerate(top_token_ids(miner)):
        for t in toks:
            by_token.setdefault(t, []).append(col)
    tops = [set(row) for row in miner.top.ids.tolist()]
    # candidates: per feature, the 2*need windows of lowest priority among those holding a top token
    heaps: dict[int, list[tuple[float, int]]] = {}
    held: Counter = Counter()  # window id -> how many heaps hold it; its token ids are kept while > 0
    for w in windows:
        cols = {c for t in set(w.token_ids) for c in by_token.get(t, ())}
        if not cols:
            continue
        prio = window_priorities(cfg.seed, [w.window_id], len(miner.features), streams=3)[2, :, 0].tolist()
        for c in cols:
            if w.window_id in tops[c]:
                continue
            heap = heaps.setdefault(c, [])
            item = (-prio[c], -w.window_id)  # a max-heap on priority keeps the smallest ones
            if len(heap) < 2 * need:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                _release(held, result, -heapq.heapreplace(heap, item)[1])
            else:
                continue
            held[w.window_id] += 1
            result.held[w.window_id] = w
    by_window: dict[int, list[tuple[float, int]]] = {}
    for c, heap in heaps.items():
        for neg_prio, neg_wid in heap:
            by_window.setdefault(-neg_wid, []).append((-neg_prio, c))
    wanted = sorted(by_window)
    limit = (cfg.negative_ratio * miner.top.keys.max(1).values).float()
    found: dict[int, list[tuple[float, int, torch.Tensor]]] = {}
    for i in tqdm(range(0, len(wanted), batch_size), desc="hard negatives", disable=not progress):
        batch = wanted[i : i + batch_size]
        acts = forward([result.held[w] for w in batch])
        low = acts.amax(1) <= limit  # [B, F]
        for b, wid in enumerate(batch):
            for p, c in by_window[wid]:
                if low[b, c]:
                    found.setdefault(c, []).append((p, wid, acts[b, :, c].clone()))
    for c, items in found.items():
        items.sort(key=lambda x: (x[0], x[1]))
        result.windows[c] = [wid for _, wid, _ in items[:need]]
        result.acts[c] = [a for _, _, a in items[:need]]
    return result


def _release(held: Counter, result: HardNegatives, window_id: int) -> None:
    """A heap dropped `window_id`: forget the window once no heap holds it."""
    held[window_id] -= 1
    if held[window_id] <= 0:
        del held[window_id]
        result.held.pop(window_id, None)
