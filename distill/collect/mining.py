"""Streaming exemplar mining with memory bounded by features x slots, whatever the corpus size.

Per feature the miner keeps, as fixed-size tensors:
- the top-k windows by max activation (ties broken by lower window id),
- a pool of activating windows (max > 0) sampled uniformly, later cut into activation quantiles,
- a uniform sample of all windows (the random exemplars, and a spare `inactive_pool` of them from
  which the inactive exemplars are drawn once the feature's max is known),
- running moments of every token's activation,
- hard-negative candidates (`negatives`): windows that hold one of the feature's top tokens *so far*
  and peak low, bottom-k by priority; found in this same pass, so collect reads the corpus once;
- other-context candidates likewise, whatever they peak at (Anthropic's top tokens in other contexts),
- a stratified sample by activation interval (`intervals`, only when the protocol asks for it).
The samples are bottom-k by a priority that depends only on (seed, window id, feature), so they do
not depend on batch size, shard order or the number of ranks: merging two miners' states gives
exactly the state one miner would reach over the union of their windows (the interval sample too,
see intervals.py; each sample is a `slots.Slots`). Hard-negative and other-context candidates are
the exception: which windows qualify depends on the top tokens known when the window is read.
"""

from __future__ import annotations

import torch

from neuroscribe.configs import MiningConfig
from neuroscribe.records import FeatureId

from .intervals import IntervalSlots
from .slots import Slots

STATE_VERSION = 3  # of a checkpointed miner state; an older one is refused, not misread
HARD_WATCH = 6  # top tokens so far a hard-negative candidate may hold (the store's rule then keeps 3)
HARD_CANDIDATES = 3  # candidate slots per hard negative wanted (some fail the final top-token rule)


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def window_priorities(seed: int, window_ids: list[int], n_features: int, streams: int = 2) -> torch.Tensor:
    """[streams, F, B] uniform priorities, a pure function of (seed, stream, window id, feature column)."""
    out = torch.empty(streams, n_features, len(window_ids), dtype=torch.float64)
    for b, w in enumerate(window_ids):
        g = torch.Generator().manual_seed(_mix64(_mix64(seed) ^ w))
        out[:, :, b] = torch.rand(streams, n_features, dtype=torch.float64, generator=g)
    return out


def top_tokens(top: Slots, n: int) -> torch.Tensor:
    """[F, n] the most frequent peak tokens of each feature's top windows, ties to the stronger window,
    -1 where a feature has fewer (only windows that activate count). Vectorised over features."""
    order, keys = top.ordered()
    tok = top.peaks.gather(1, order)
    valid = keys > 0
    same = (tok.unsqueeze(2) == tok.unsqueeze(1)) & valid.unsqueeze(1)  # [F, k, k]
    count = same.sum(2)
    earlier = torch.tril(torch.ones(top.k, top.k, dtype=torch.bool), diagonal=-1)
    first = valid & ~(same & earlier).any(2)  # the strongest window of each distinct token
    score = torch.where(first, count * (top.k + 1) + (top.k - torch.arange(top.k)), torch.full_like(count, -1))
    best, pos = score.topk(min(n, top.k), dim=1)
    out = torch.where(best >= 0, tok.gather(1, pos), torch.full_like(pos, -1))
    return torch.nn.functional.pad(out, (0, n - out.shape[1]), value=-1)


class Miner:
    """Mining state for F features over windows of T tokens."""

    def __init__(self, features: list[FeatureId], window: int, config: MiningConfig):
        self.features, self.window, self.config = features, window, config
        F = len(features)
        self.top = Slots(F, config.top_k, window, largest=True, peaks=True)
        self.pool = Slots(F, config.pool, window, largest=False, extra=True)
        self.random = Slots(F, config.random_k + config.inactive_pool, window, largest=False, extra=True)
        self.hard = Slots(F, HARD_CANDIDATES * config.hard_negatives, window, largest=False, extra=True)
        self.context = Slots(F, HARD_CANDIDATES * config.other_context, window, largest=False, extra=True)
        self.interval = IntervalSlots(F, config.intervals, config.per_interval, window)
        self.moments = torch.zeros(F, 5, dtype=torch.float64)  # n, sum a, a^2, a^3, a^4
        self.n_active = torch.zeros(F, dtype=torch.int64)
        self.window_tokens: dict[int, tuple[int, ...]] = {}
        self.window_docs: dict[int, tuple[int, int]] = {}  # window id -> (first, last) document it touches
        self.shards_done: list[int] = []

    def update(
        self,
        acts: torch.Tensor,
        window_ids: list[int],
        token_ids: list[tuple[int, ...]],
        doc_spans: list[tuple[int, int]] | None = None,
    ) -> None:
        """Fold one batch in: acts [B, T, F] float32 for windows `window_ids`."""
        a = acts.reshape(-1, acts.shape[-1])
        a2 = a * a
        # per-batch power sums in float32 (BLAS), accumulated in float64; NaN/inf propagate into them
        sums = torch.stack([a.sum(0), a2.sum(0), (a2 * a).sum(0), (a2 * a2).sum(0)], 1)
        if not torch.isfinite(sums).all():
            self._raise_non_finite(acts, window_ids)
        self.moments[:, 0] += a.shape[0]
        self.moments[:, 1:] += sums.double()
        self.n_active += (a > 0).sum(0)
        B = len(window_ids)
        ids = torch.tensor(window_ids, dtype=torch.int64).expand(len(self.features), B)
        by_feature = acts.permute(2, 0, 1).contiguous()  # [F, B, T]: candidate rows are contiguous
        maxes, at = by_feature.max(dim=2)  # [F, B]; `at` is the first peak position
        tokens = torch.tensor(token_ids, dtype=torch.int64)  # [B, T]
        peaks = tokens.gather(1, at.T).T  # [F, B] token id at each candidate's peak
        per_pair = lambda f, c: by_feature[f, c]  # noqa: E731  [n, T]
        streams = 4 if self.config.other_context else 3  # a stream is drawn only when a source uses it
        prio = window_priorities(self.config.seed, window_ids, len(self.features), streams=streams)
        never = float("inf")
        self.top.offer(maxes.to(torch.float64), ids, per_pair, peaks=peaks)
        pool_prio = torch.where(maxes > 0, prio[0], torch.full_like(prio[0], never))
        self.pool.offer(pool_prio, ids, per_pair, maxes)
        self.random.offer(prio[1], ids, per_pair, maxes)
        if self.config.hard_negatives > 0:
            self.hard.offer(self._hard_priorities(prio[2], maxes, tokens, capped=True), ids, per_pair, maxes)
        if self.config.other_context > 0:
            self.context.offer(self._hard_priorities(prio[3], maxes, tokens, capped=False), ids, per_pair, maxes)
        self.interval.offer(prio[0], ids, maxes, per_pair)
        self.window_tokens.update(zip(window_ids, token_ids))
        self.window_docs.update(zip(window_ids, doc_spans or [(w, w) for w in window_ids]))

    def _hard_priorities(
        self, prio: torch.Tensor, maxes: torch.Tensor, tokens: torch.Tensor, capped: bool
    ) -> torch.Tensor:
        """[F, B] priority of each window as a hard-negative (`capped`) or other-context candidate, inf
        where it is none: it must hold one of the feature's `HARD_WATCH` top tokens so far and, when
        capped, peak at <= negative_ratio x the max so far (the max only grows, so a window that passes
        now still passes at the end)."""
        watch = top_tokens(self.top, HARD_WATCH)  # [F, W]
        holds = torch.stack([torch.isin(watch, row) & (watch >= 0) for row in tokens], 2).any(1)  # [F, B]
        limit = self.config.negative_ratio * self.top.keys.max(1, keepdim=True).values.float()
        ok = holds & (limit > 0) & ((maxes <= limit) if capped else True)
        return torch.where(ok, prio, torch.full_like(prio, float("inf")))

    def _raise_non_finite(self, acts: torch.Tensor, window_ids: list[int]) -> None:
        b, t, f = (~torch.isfinite(acts)).nonzero()[0].tolist()
        raise FloatingPointError(
            f"non-finite activation (NaN/inf) for feature {self.features[f].key} in window "
            f"{window_ids[b]}, token {t}; try --dtype float32"
        )

    def prune_tokens(self) -> None:
        """Forget token ids of windows no slot refers to (keeps memory bounded)."""
        keep = set(torch.cat([s.ids.flatten() for s in (*self.slots(), self.interval.slots)]).tolist())
        self.window_tokens = {w: t for w, t in self.window_tokens.items() if w in keep}
        self.window_docs = {w: d for w, d in self.window_docs.items() if w in keep}

    def slots(self) -> tuple[Slots, ...]:
        return self.top, self.pool, self.random, self.hard, self.context

    def absorb(self, other: Miner) -> None:
        for mine, theirs in zip(self.slots(), other.slots()):
            mine.absorb(theirs)
        self.interval.absorb(other.interval)
        self.moments += other.moments
        self.n_active += other.n_active
        self.window_tokens.update(other.window_tokens)
        self.window_docs.update(other.window_docs)
        self.shards_done = sorted(set(self.shards_done) | set(other.shards_done))

    def state(self) -> dict:
        return {
            "top": self.top.state(),
            "pool": self.pool.state(),
            "random": self.random.state(),
            "hard": self.hard.state(),
            "context": self.context.state(),
            "interval": self.interval.state(),
            "version": STATE_VERSION,
            "moments": self.moments,
            "n_active": self.n_active,
            "window_tokens": self.window_tokens,
            "window_docs": self.window_docs,
            "shards_done": self.shards_done,
        }

    def load(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"a collect checkpoint of another neuroscribe version (state {state.get('version')}, this one "
                f"reads {STATE_VERSION}); pass --overwrite to discard it"
            )
        self.hard.load(state["hard"])
        self.context.load(state["context"])
        self.interval.load(state["interval"])
        self.top.load(state["top"])
        self.pool.load(state["pool"])
        self.random.load(state["random"])
        self.moments, self.n_active = state["moments"], state["n_active"]
        self.window_tokens, self.shards_done = state["window_tokens"], list(state["shards_done"])
        self.window_docs = state["window_docs"]


def moment_stats(moments: torch.Tensor) -> dict[str, torch.Tensor]:
    """mean, variance, skewness, kurtosis (non-excess) from raw power sums; 0 where undefined."""
    n = moments[:, 0].clamp(min=1)
    m1, m2, m3, m4 = (moments[:, i] / n for i in range(1, 5))
    var = (m2 - m1**2).clamp(min=0)
    c3 = m3 - 3 * m1 * m2 + 2 * m1**3
    c4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    safe = var > 1e-20
    skew = torch.where(safe, c3 / var.clamp(min=1e-20) ** 1.5, torch.zeros_like(var))
    kurt = torch.where(safe, c4 / var.clamp(min=1e-20) ** 2, torch.zeros_like(var))
    return {"mean": m1, "variance": var, "skewness": skew, "kurtosis": kurt}
