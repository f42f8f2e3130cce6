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
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from neuroscribe import __version__
from neuroscribe.corpus import BUILTIN, Window, context_prefix, iter_documents, iter_windows
from neuroscribe.features import ActivationReader, parse_feature_spec
from neuroscribe.models import DEFAULT_MODEL, load_model
from neuroscribe.records import Exemplar, FeatureExemplars, FeatureStats
from neuroscribe.store import write_store

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
            records = finalize(miner, tok, negatives)
            timings["finalize_s"] = time.perf_counter() - t0 - timings["hard_negatives_s"]
            meta = _meta(cfg, tok, groups, prefix, n_windows, dist.world)
            write_store(out, records, {**meta, "timings": timings}, overwrite=True)
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
    kill_after = int(os.environ.get("NEUROSCRIBE_TEST_KILL_AFTER_SHARDS", "0"))  # tests: a real SIGKILL
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
        if kill_after and done_now >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    return n_windows


def top_token_ids(miner: Miner, col: int, n: int = 3) -> list[int]:
    """The most frequent tokens at the peaks of a feature's top windows."""
    peaks = Counter()
    for slot in range(miner.top.k):
        wid = int(miner.top.ids[col, slot])
        if wid < 0 or miner.top.keys[col, slot] <= 0:
            continue
        pos = int(miner.top.acts[col, slot].argmax())
        peaks[miner.window_tokens[wid][pos]] += 1
    return [t for t, _ in peaks.most_common(n)]


def _hard_negatives(cfg, tok, prefix, reader, miner: Miner) -> dict[int, list[tuple[int, tuple, torch.Tensor]]]:
    """Second pass: per feature column, [(window_id, token_ids, acts[T])] hard negatives, best first."""
    need = cfg.mining.hard_negatives
    if need <= 0:
        return {}
    by_token: dict[int, list[int]] = {}
    for col in range(len(miner.features)):
        for t in top_token_ids(miner, col):
            by_token.setdefault(t, []).append(col)
    tops = [set(miner.top.ids[c].tolist()) for c in range(len(miner.features))]
    heaps: dict[int, list[tuple[float, int]]] = {}
    tokens: dict[int, tuple[int, ...]] = {}
    for w in _windows(cfg, tok):
        cols = sorted({c for t in set(w.token_ids) for c in by_token.get(t, ())})
        if not cols:
            continue
        prio = window_priorities(cfg.mining.seed, [w.window_id], len(miner.features), streams=3)[2, :, 0]
        for c in cols:
            if w.window_id in tops[c]:
                continue
            heap = heaps.setdefault(c, [])
            item = (-float(prio[c]), -w.window_id)  # max-heap of the 4*need smallest priorities
            if len(heap) < 4 * need:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
            tokens[w.window_id] = w.token_ids
    by_window: dict[int, list[tuple[int, float]]] = {}
    for c, heap in heaps.items():
        for neg_prio, neg_wid in heap:
            by_window.setdefault(-neg_wid, []).append((c, -neg_prio))
    wanted = sorted(by_window)
    found: dict[int, list[tuple[float, int, torch.Tensor]]] = {}
    fmax = miner.top.keys[:, 0]
    for i in tqdm(range(0, len(wanted), cfg.batch_size), desc="hard negatives", disable=not cfg.progress):
        batch = wanted[i : i + cfg.batch_size]
        ids = torch.tensor([prefix + list(tokens[w]) for w in batch], device=cfg.device)
        acts = reader.read(ids)[:, len(prefix):, :].cpu()
        for b, wid in enumerate(batch):
            for c, p in by_window[wid]:
                if float(acts[b, :, c].max()) <= cfg.mining.negative_ratio * float(fmax[c]):
                    found.setdefault(c, []).append((p, wid, acts[b, :, c].clone()))
    return {c: [(wid, tokens[wid], a) for _, wid, a in sorted(v)[:need]] for c, v in found.items()}


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
                text = self.tok.convert_ids_to_tokens(i)
                self.memo[i] = text.translate(str.maketrans("<>[]", "‹›⟦⟧"))
            else:
                self.memo[i] = self.tok.decode([i])
        return self.memo[i]

    def __call__(self, ids) -> tuple[str, ...]:
        return tuple(self.piece(i) for i in ids)


def finalize(miner: Miner, tok, negatives: dict) -> list[FeatureExemplars]:
    """Turn mining state into FeatureExemplars: dedup windows across sources, assign splits by stride."""
    cfg = miner.config
    stats = moment_stats(miner.moments)
    text = TokenText(tok)
    records = []
    for col, fid in enumerate(miner.features):
        fmax = float(miner.top.keys[col, 0])
        n_tok = int(miner.moments[col, 0])
        if not fmax > 0:
            records.append(FeatureExemplars(fid, (), FeatureStats(max(fmax, 0.0), n_tokens=n_tok), dead=True))
            continue
        used: set[int] = set()
        picked: list[tuple[str, int, int, torch.Tensor]] = []  # (source, quantile, window id, acts)

        def take(source, entries, quantile=-1):
            for wid, acts in entries:
                if wid >= 0 and wid not in used:
                    used.add(wid)
                    picked.append((source, quantile, wid, acts))

        take("top", [(int(miner.top.ids[col, s]), miner.top.acts[col, s])
                     for s in range(miner.top.k) if miner.top.keys[col, s] > 0])
        pool = [(float(miner.pool.maxes[col, s]), float(miner.pool.keys[col, s]), int(miner.pool.ids[col, s]), s)
                for s in range(miner.pool.k) if torch.isfinite(miner.pool.keys[col, s])]
        pool = [p for p in pool if p[2] not in used]
        pool.sort()
        bins = [pool[len(pool) * q // cfg.quantiles : len(pool) * (q + 1) // cfg.quantiles] for q in range(cfg.quantiles)]
        boundaries = tuple(b[0][0] for b in bins if b)
        for q, b in enumerate(bins):
            b = sorted(b, key=lambda p: p[1])[: cfg.per_quantile]
            take("quantile", [(wid, miner.pool.acts[col, s]) for _, _, wid, s in b], q)
        take("random", [(int(miner.random.ids[col, s]), miner.random.acts[col, s]) for s in range(miner.random.k)])
        take("hard_negative", [(wid, acts) for wid, _, acts in negatives.get(col, [])])
        neg_tokens = {wid: toks for wid, toks, _ in negatives.get(col, [])}
        exemplars, rank_in = [], Counter()
        for source, quantile, wid, acts in picked:
            i = rank_in[source]
            rank_in[source] += 1
            ids = miner.window_tokens.get(wid) or neg_tokens[wid]
            exemplars.append(Exemplar(
                tokens=text(ids), activations=tuple(acts.tolist()), window_id=wid, source=source,
                split=cfg.splits[i % len(cfg.splits)], rank=i, quantile=quantile, token_ids=tuple(ids),
            ))
        top_tokens = text(top_token_ids(miner, col, 5))
        st = FeatureStats(
            max_activation=fmax, mean=float(stats["mean"][col]), variance=float(stats["variance"][col]),
            skewness=float(stats["skewness"][col]), kurtosis=float(stats["kurtosis"][col]), n_tokens=n_tok,
            frac_active=float(miner.n_active[col]) / max(n_tok, 1), quantile_boundaries=boundaries,
        )
        records.append(FeatureExemplars(fid, tuple(exemplars), st, False, top_tokens))
    return records


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
