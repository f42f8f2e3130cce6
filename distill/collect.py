"""collect: run a subject model over a corpus and write a per-feature exemplar store.

Work is cut into shards of `shard_windows` consecutive windows. After each shard the miner state is
checkpointed (atomically) under OUT/.collect/, so a killed run resumes from its last finished shard
and ends with the same store as an uninterrupted run. Under `accelerate launch` (or torchrun) rank r
takes shards r, r+W, ...; rank 0 merges the ranks' states, which is exact for every exemplar (see
mining.py; summary moments agree to float64 rounding), mines hard negatives and writes the store.

Hard negatives are windows that contain one of the feature's top tokens (the tokens at the peaks of
its top windows) yet peak at <= negative_ratio x the feature's max. They need the final top tokens,
so they come from a second, bounded pass on rank 0: candidates are picked from token ids alone
(no forward pass), then only those candidate windows are run through the model.

Multi-process:
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml --num_processes 2 \
        -m neuroscribe.distill.collect --model M --features 'mlp:0-3' --out DIR
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from neuroscribe import __version__
from neuroscribe.corpus import BUILTIN, Window, context_prefix, iter_documents, iter_windows
from neuroscribe.features import ActivationReader, parse_feature_spec
from neuroscribe.models import DEFAULT_MODEL, load_model
from neuroscribe.testing import kill_point
from neuroscribe.store import FEATURE_SCHEMA, exemplar_table, list_column, write_tables

from .mining import Miner, MiningConfig, moment_stats, window_priorities

STATE_DIR = ".collect"


@dataclass(frozen=True)
class CollectConfig:
    out: str
    model: str = DEFAULT_MODEL
    features: tuple[str, ...] = ("mlp:0",)
    dataset: str = BUILTIN
    text_field: str = "text"
    window: int = 64
    max_windows: int | None = 1024
    batch_size: int = 16
    shard_windows: int = 256
    dtype: str = "float32"
    device: str = "cpu"
    polarity: str = "auto"
    mining: MiningConfig = field(default_factory=MiningConfig)
    overwrite: bool = False
    progress: bool = True

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (not: out, overwrite, progress)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("out", "overwrite", "progress")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EmptyDatasetError(ValueError):
    pass


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _dist() -> _Dist:
    """Rank and world size from the launcher's environment (accelerate launch, torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def _shards(windows: Iterator[Window], size: int) -> Iterator[tuple[int, list[Window]]]:
    shard_id = 0
    while chunk := list(islice(windows, size)):
        yield shard_id, chunk
        shard_id += 1


def _windows(cfg: CollectConfig, tok) -> Iterator[Window]:
    return iter_windows(tok, iter_documents(cfg.dataset, cfg.text_field), cfg.window, cfg.max_windows)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def collect(cfg: CollectConfig) -> Path:
    """Mine exemplars for every feature of `cfg.features` and write the store to `cfg.out`."""
    out = Path(cfg.out)
    if (out / "meta.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds an exemplar store; pass --overwrite to replace it")
    dist = _dist()
    model, tok = load_model(cfg.model, cfg.dtype, cfg.device)
    groups = parse_feature_spec(list(cfg.features), model, cfg.polarity)
    prefix = context_prefix(tok)
    with ActivationReader(model, groups) as reader:
        miner = Miner(reader.features, cfg.window, cfg.mining)
        state_dir = out / STATE_DIR
        ckpt = state_dir / f"rank{dist.rank}-of-{dist.world}.pt"
        _resume(miner, ckpt, cfg)
        timings = {}
        t0 = time.perf_counter()
        n_windows = _mine(cfg, dist, tok, prefix, reader, miner, ckpt)
        timings["mine_s"] = time.perf_counter() - t0
        dist.barrier()
        if dist.rank == 0:
            for r in range(1, dist.world):
                other = Miner(reader.features, cfg.window, cfg.mining)
                other.load(torch.load(state_dir / f"rank{r}-of-{dist.world}.pt", weights_only=False)["miner"])
                miner.absorb(other)
            if n_windows == 0:
                raise EmptyDatasetError(
                    f"dataset {cfg.dataset!r} gave no window of {cfg.window} tokens (field {cfg.text_field!r})"
                )
            t0 = time.perf_counter()
            negatives = _hard_negatives(cfg, tok, prefix, reader, miner)
            timings["hard_negatives_s"] = time.perf_counter() - t0
            features_table, exemplars_table = finalize(miner, tok, negatives)
            timings["finalize_s"] = time.perf_counter() - t0 - timings["hard_negatives_s"]
            meta = _meta(cfg, tok, groups, prefix, n_windows, dist.world)
            write_tables(out, features_table, exemplars_table, {**meta, "timings": timings}, overwrite=True)
            shutil.rmtree(state_dir, ignore_errors=True)
    dist.barrier()
    return out


def _resume(miner: Miner, ckpt: Path, cfg: CollectConfig) -> None:
    if not ckpt.exists():
        return
    saved = torch.load(ckpt, weights_only=False)
    if saved["fingerprint"] != cfg.fingerprint():
        if not cfg.overwrite:
            raise FileExistsError(
                f"{ckpt} is a checkpoint of a different collect configuration; pass --overwrite to discard it"
            )
        ckpt.unlink()
        return
    miner.load(saved["miner"])


def _mine(cfg, dist: _Dist, tok, prefix, reader, miner: Miner, ckpt: Path) -> int:
    """Forward the shards of this rank; returns the number of windows in the whole corpus."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    done_now, n_windows = 0, 0
    bar = tqdm(total=cfg.max_windows, desc=f"collect[rank {dist.rank}]", unit="win",
               disable=not cfg.progress or dist.rank != 0)
    for shard_id, shard in _shards(_windows(cfg, tok), cfg.shard_windows):
        n_windows += len(shard)
        bar.update(len(shard))
        if shard_id % dist.world != dist.rank or shard_id in miner.shards_done:
            continue
        for i in range(0, len(shard), cfg.batch_size):
            batch = shard[i : i + cfg.batch_size]
            ids = torch.tensor([prefix + list(w.token_ids) for w in batch], device=cfg.device)
            acts = reader.read(ids)[:, len(prefix):, :].cpu()
            miner.update(acts, [w.window_id for w in batch], [w.token_ids for w in batch])
        miner.shards_done.append(shard_id)
        miner.prune_tokens()
        _save_atomic({"fingerprint": cfg.fingerprint(), "miner": miner.state()}, ckpt)
        done_now += 1
        kill_point("NEUROSCRIBE_TEST_KILL_AFTER_SHARDS", done_now)
    bar.close()
    return n_windows


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
    tokens: dict[int, tuple[int, ...]] = field(default_factory=dict)


def _hard_negatives(cfg, tok, prefix, reader, miner: Miner) -> HardNegatives:
    need = cfg.mining.hard_negatives
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
    for w in _windows(cfg, tok):
        cols = {c for t in set(w.token_ids) for c in by_token.get(t, ())}
        if not cols:
            continue
        prio = window_priorities(cfg.mining.seed, [w.window_id], len(miner.features), streams=3)[2, :, 0].tolist()
        for c in cols:
            if w.window_id in tops[c]:
                continue
            heap = heaps.setdefault(c, [])
            item = (-prio[c], -w.window_id)  # a max-heap on priority keeps the smallest ones
            if len(heap) < 2 * need:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
            result.tokens[w.window_id] = w.token_ids
    by_window: dict[int, list[tuple[float, int]]] = {}
    for c, heap in heaps.items():
        for neg_prio, neg_wid in heap:
            by_window.setdefault(-neg_wid, []).append((-neg_prio, c))
    wanted = sorted(by_window)
    limit = (cfg.mining.negative_ratio * miner.top.keys.max(1).values).float()
    found: dict[int, list[tuple[float, int, torch.Tensor]]] = {}
    for i in tqdm(range(0, len(wanted), cfg.batch_size), desc="hard negatives", disable=not cfg.progress):
        batch = wanted[i : i + cfg.batch_size]
        ids = torch.tensor([prefix + list(result.tokens[w]) for w in batch], device=cfg.device)
        acts = reader.read(ids)[:, len(prefix):, :].cpu()
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
    top_ids, pool_ids, rand_ids = (s.ids.gather(1, o).tolist() for s, o in
                                   ((miner.top, top_order), (miner.pool, pool_order), (miner.random, rand_order)))
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
        pool = [(m, i) for i, (w, k, m) in enumerate(zip(pool_ids[col], pool_keys[col], pool_max[col]))
                if k != float("inf") and w not in used]
        by_act = sorted(pool)
        bins = [by_act[len(by_act) * q // cfg.quantiles : len(by_act) * (q + 1) // cfg.quantiles] for q in range(cfg.quantiles)]
        boundaries = tuple(b[0][0] for b in bins if b)
        for q, members in enumerate(bins):
            first = sorted(i for _, i in members)[: cfg.per_quantile]  # i is the priority order
            take("quantile", q, [(pool_ids[col][i], ("pool", pool_order[col][i])) for i in first])
        take("random", -1, [(w, ("random", s)) for w, k, s in zip(rand_ids[col], rand_keys[col], rand_order[col])
                            if k != float("inf")])
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
    scalars: dict[str, list] = {k: [] for k in ("feature", "layer", "kind", "split", "source", "rank", "quantile", "window_id")}
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
            for name, value in (("feature", fid.key), ("layer", fid.layer), ("kind", fid.kind),
                                ("split", cfg.splits[i % len(cfg.splits)]), ("source", source), ("rank", i),
                                ("quantile", quantile), ("window_id", wid)):
                scalars[name].append(value)
            refs.append((kind, col, slot))
        feature_rows.append({
            "feature": fid.key, "kind": fid.kind, "layer": fid.layer, "index": fid.index, "polarity": fid.polarity,
            "dead": dead, "max_activation": max(fmax[col], 0.0), "mean": stats["mean"][col],
            "variance": stats["variance"][col], "skewness": stats["skewness"][col], "kurtosis": stats["kurtosis"][col],
            "n_tokens": n_tok[col], "frac_active": n_active[col] / max(n_tok[col], 1),
            "quantile_boundaries": list(boundaries), "top_tokens": [] if dead else list(text(tops[col])),
        })
    acts = _gather_acts(miner, negatives, refs)
    wids = np.array(scalars["window_id"], dtype=np.int64)
    windows = {**negatives.tokens, **miner.window_tokens}
    unique = np.unique(wids)
    token_matrix = np.array([windows[int(w)] for w in unique], dtype=np.int32).reshape(len(unique), miner.window)
    token_ids = token_matrix[np.searchsorted(unique, wids)]
    vocab = np.unique(token_ids)
    strings = pa.array([text.piece(int(i)) for i in vocab], pa.string()).take(
        pa.array(np.searchsorted(vocab, token_ids.reshape(-1))))
    offsets = pa.array(np.arange(0, token_ids.size + 1, miner.window, dtype=np.int32))
    exemplars = exemplar_table(
        scalars, pa.ListArray.from_arrays(offsets, strings),
        list_column(token_ids, pa.int32()), list_column(acts, pa.float32()),
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


def _meta(cfg: CollectConfig, tok, groups, prefix, n_windows: int, world: int) -> dict:
    return {
        "model": cfg.model, "tokenizer": getattr(tok, "name_or_path", ""), "features_spec": list(cfg.features),
        "groups": [{"kind": g.kind, "layer": g.layer, "n_units": len(g.indices), "polarities": list(g.polarities),
                    "encoder_path": g.encoder_path} for g in groups],
        "hook_point": "mlp: input of the MLP output projection; sae/transcoder: encoder output at its hook site",
        "dtype": cfg.dtype, "stored_dtype": "float32", "normalisation": "none (raw, polarity applied)",
        "window": cfg.window, "context_prefix_ids": prefix, "dataset": cfg.dataset, "text_field": cfg.text_field,
        "windows_seen": n_windows, "mining": asdict(cfg.mining), "fingerprint": cfg.fingerprint(),
        "world_size": world, "neuroscribe_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


if __name__ == "__main__":
    import sys

    from neuroscribe.cli import app

    app(["collect", *sys.argv[1:]], prog_name="neuroscribe.distill.collect")
