"""collect: run a subject model over a corpus and write a per-feature exemplar store (`runs.store`).

Work is cut into shards of `shard_windows` consecutive windows. After each shard the miner state is
checkpointed (atomically) under OUT/.collect/, so a killed run resumes from its last finished shard
and ends with the same store as an uninterrupted run. Under `accelerate launch` (or torchrun) rank r
takes shards r, r+W, ...; rank 0 merges the ranks' states, which is exact for every exemplar (see
mining.py; summary moments agree to float64 rounding; hard negatives, found in the same pass, are
the exception, see negatives.py) and turns the state into the store's tables (`finalize`).

Multi-process:
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml --num_processes 2 \
        -m neuroscribe.distill.collect --model M --features 'mlp:0-3' --out DIR
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from neuroscribe import __version__
from neuroscribe import dist as distributed
from neuroscribe.bases import BASIS_KINDS, check_basis_spec, fit_basis, parse_basis_spec
from neuroscribe.configs import CollectConfig
from neuroscribe.corpus import (
    Window,
    context_prefix,
    dataset_fingerprint,
    iter_documents,
    iter_windows,
    neutral_context,
)
from neuroscribe.faults import COLLECT_SHARDS, kill_point
from neuroscribe.features import ActivationReader, parse_feature_spec
from neuroscribe.models import load_model
from neuroscribe.options import to_dict
from neuroscribe.progress import progress
from neuroscribe.runs.files import OutputLock, disk_error, fingerprint, guard_output, refuse_existing
from neuroscribe.runs.store import META, output_table, write_tables

from .finalize import finalize
from .mining import STATE_VERSION, Miner
from .negatives import out_of_context_tokens
from .outputs import describe_outputs

STATE_DIR = ".collect"


def collect_fingerprint(cfg: CollectConfig, dataset_content: str) -> str:
    """What a checkpoint must match to be resumed: the config (not out/overwrite/progress) and the
    dataset's CONTENT, so a changed file under the same path is never resumed into."""
    keep = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "overwrite", "progress")}
    return fingerprint({**keep, "dataset_content": dataset_content})


class EmptyDatasetError(ValueError):
    pass


def _shards(windows: Iterator[Window], size: int) -> Iterator[tuple[int, list[Window]]]:
    shard_id = 0
    while chunk := list(islice(windows, size)):
        yield shard_id, chunk
        shard_id += 1


def _windows(cfg: CollectConfig, tok) -> Iterator[Window]:
    return iter_windows(tok, iter_documents(cfg.dataset, cfg.text_field), cfg.window, cfg.max_windows, cfg.context)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise disk_error(err, path.parent) from None
    except RuntimeError:  # how torch reports a full disk: "enforce fail at inline_container.cc"
        tmp.unlink(missing_ok=True)
        raise OSError(
            f"{path.parent}: cannot write the collect checkpoint (the disk is full, or a file size limit was reached)"
        ) from None


def collect(cfg: CollectConfig) -> Path:
    """Mine exemplars for every feature of `cfg.features` and write the store to `cfg.out`."""
    out = Path(cfg.out)
    guard_output(
        out,
        {
            "--dataset": cfg.dataset if Path(cfg.dataset).exists() else None,
            "--model": cfg.model if Path(cfg.model).exists() else None,
        },
    )
    refuse_existing(out, META, cfg.overwrite, "an exemplar store")
    dist = distributed.current()
    model, tok = load_model(cfg.model, cfg.dtype, cfg.device)
    groups = parse_feature_spec(_fitted_bases(cfg, model, tok, out, dist), model, cfg.polarity)
    content = dataset_fingerprint(cfg.dataset)
    key = collect_fingerprint(cfg, content)
    with OutputLock(out, dist.rank), ActivationReader(model, groups) as reader:
        prefix = context_prefix(tok)  # the tokenizer's own (Llama's BOS); each window adds its preceding tokens

        def forward(windows: list[Window]) -> torch.Tensor:
            """[B, T, F] activations of the windows' own tokens, each read after its context."""
            n = len(prefix) + cfg.context
            ids = torch.tensor([prefix + list(w.context) + list(w.token_ids) for w in windows], device=cfg.device)
            return reader.read(ids)[:, n:, :].cpu()

        miner = Miner(reader.features, cfg.window, cfg.mining)
        state_dir = out / STATE_DIR
        ckpt = state_dir / f"rank{dist.rank}-of-{dist.world}.pt"
        _resume(miner, ckpt, cfg, key)
        timings = {}
        t0 = time.perf_counter()
        n_windows = _mine(cfg, dist, tok, forward, miner, ckpt, key)
        timings["mine_s"] = time.perf_counter() - t0
        dist.barrier()
        if dist.rank == 0:
            for r in range(1, dist.world):
                other = Miner(reader.features, cfg.window, cfg.mining)
                path = state_dir / f"rank{r}-of-{dist.world}.pt"
                _load_state(other, _read_checkpoint(path), path)
                miner.absorb(other)
            if n_windows == 0:
                shutil.rmtree(state_dir, ignore_errors=True)
                raise EmptyDatasetError(
                    f"dataset {cfg.dataset!r} gave no window of {cfg.window} tokens (field {cfg.text_field!r})"
                )
            t0 = time.perf_counter()
            alone = None
            if cfg.mining.out_of_context > 0:
                alone = read_alone(reader, prefix, miner, cfg, neutral_context(tok, cfg.context))
                timings["out_of_context_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
            features_table, exemplars_table = finalize(miner, tok, alone)
            timings["finalize_s"] = time.perf_counter() - t0
            outputs = None
            if cfg.output_side:
                reader.close()  # its hooks would cut the steered forward passes short
                t0 = time.perf_counter()
                fmax = dict(
                    zip(
                        features_table.column("feature").to_pylist(),
                        features_table.column("max_activation").to_pylist(),
                    )
                )
                outputs = output_table(describe_outputs(model, tok, groups, fmax, cfg.output_tokens, cfg.steer))
                timings["output_side_s"] = time.perf_counter() - t0
            meta = _meta(cfg, tok, groups, prefix, n_windows, dist.world, key, content)
            write_tables(out, features_table, exemplars_table, {**meta, "timings": timings}, True, outputs)
            shutil.rmtree(state_dir, ignore_errors=True)
        dist.barrier()
    return out


def read_alone(reader: ActivationReader, prefix: list[int], miner: Miner, cfg: CollectConfig, neutral: list[int]):
    """(tokens [F, n], activations [F, n]): each feature's top-activating tokens (`negatives`), each read
    out of its context: after the tokenizer's own prefix (e.g. Llama's BOS) and `neutral`
    (`corpus.neutral_context`, as many tokens as a window's context), never at the sink position."""
    tokens = out_of_context_tokens(miner, cfg.mining.out_of_context)
    unique = np.unique(tokens[tokens >= 0])
    acts = np.zeros((len(unique), tokens.shape[0]), np.float32)
    for i in range(0, len(unique), 256):  # short sequences: wide batches cost little
        ids = torch.tensor([prefix + neutral + [int(t)] for t in unique[i : i + 256]], device=cfg.device)
        acts[i : i + 256] = reader.read(ids)[:, -1, :].float().cpu().numpy()
    at = np.searchsorted(unique, np.maximum(tokens, 0)).clip(0, max(len(unique) - 1, 0))
    values = acts[at, np.arange(tokens.shape[0])[:, None]] if len(unique) else np.zeros(tokens.shape, np.float32)
    return tokens, np.where(tokens >= 0, values, 0.0)


def _fitted_bases(cfg: CollectConfig, model, tok, out: Path, dist) -> list[str]:
    """The feature spec with each control-basis item (`neuroscribe.bases`) replaced by `basis:FILE`, the
    basis fitted on the first `basis_fit_windows` corpus windows (rank 0) and saved in `OUT/bases/`."""

    items = [s.strip() for part in cfg.features for s in part.split(";") if s.strip()]
    specs = {item: parse_basis_spec(item) for item in items if item.partition(":")[0] in BASIS_KINDS}
    for item, spec in specs.items():  # every item checked before the first basis is fitted into OUT
        check_basis_spec(spec, model, item)
    if specs and len(specs) < len(items):
        parse_feature_spec([i for i in items if i not in specs], model, cfg.polarity)
    out_items = []
    for item in items:
        if item not in specs:
            out_items.append(item)
            continue
        spec = specs[item]
        path = out / "bases" / spec.file_name
        if dist.is_main and not path.exists():
            prefix = context_prefix(tok)
            windows = list(
                iter_windows(
                    tok, iter_documents(cfg.dataset, cfg.text_field), cfg.window, cfg.basis_fit_windows, cfg.context
                )
            )
            batches = (
                torch.tensor(
                    [prefix + list(w.context) + list(w.token_ids) for w in windows[i : i + cfg.batch_size]],
                    device=cfg.device,
                )
                for i in range(0, len(windows), cfg.batch_size)
            )
            fit_basis(spec, model, batches, cfg.mining.seed, skip=len(prefix) + cfg.context).save(path)
        out_items.append(f"basis:{path}")
    dist.barrier()
    return out_items


class CorruptCheckpoint(ValueError):
    """A file under OUT/.collect/ that cannot be resumed from (torn, foreign, or missing part of the state)."""


def _read_checkpoint(path: Path) -> dict:
    """A checkpoint as {fingerprint, miner}; one error naming the file when it is cut short or not one."""
    try:
        saved = torch.load(path, weights_only=False)
    except Exception as err:  # torch/pickle report a torn or foreign file in many ways (EOF, unpickling, zip)
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CorruptCheckpoint(
            f"{path}: not a readable collect checkpoint ({reason}); pass --overwrite to discard it"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("miner"), dict) or "fingerprint" not in saved:
        raise CorruptCheckpoint(
            f"{path}: not a collect checkpoint (no fingerprint and miner state); pass --overwrite to discard it"
        )
    return saved


def _load_state(miner: Miner, saved: dict, path: Path) -> None:
    fresh = miner.state()
    try:
        miner.load(saved["miner"])
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        miner.load(fresh)  # never resume from half a state
        raise CorruptCheckpoint(
            f"{path}: the miner state is incomplete ({type(err).__name__}: {err}); pass --overwrite to discard it"
        ) from None


def _resume(miner: Miner, ckpt: Path, cfg: CollectConfig, key: str) -> None:
    if not ckpt.exists():
        return
    try:
        saved = _read_checkpoint(ckpt)
        if saved["fingerprint"] != key or saved["miner"].get("version") != STATE_VERSION:
            raise FileExistsError(
                f"{ckpt} is a checkpoint of a different collect configuration, dataset content or neuroscribe "
                "version; pass --overwrite to discard it"
            )
        _load_state(miner, saved, ckpt)
    except (CorruptCheckpoint, FileExistsError):
        if not cfg.overwrite:
            raise
        ckpt.unlink()


def _mine(cfg, dist: distributed.Dist, tok, forward, miner: Miner, ckpt: Path, key: str) -> int:
    """Forward the shards of this rank; returns the number of windows in the whole corpus. A run that
    fails before its first checkpoint leaves no empty state folder."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _mine_shards(cfg, dist, tok, forward, miner, ckpt, key)
    except BaseException:
        with contextlib.suppress(OSError):
            ckpt.parent.rmdir()  # only when empty
        raise


def _mine_shards(cfg, dist: distributed.Dist, tok, forward, miner: Miner, ckpt: Path, key: str) -> int:
    done_now, n_windows = 0, 0
    bar = progress(
        total=cfg.max_windows, desc=f"collect[rank {dist.rank}]", unit="win", disable=not cfg.progress or dist.rank != 0
    )
    for shard_id, shard in _shards(_windows(cfg, tok), cfg.shard_windows):
        n_windows += len(shard)
        bar.update(len(shard))
        if shard_id % dist.world != dist.rank or shard_id in miner.shards_done:
            continue
        for i in range(0, len(shard), cfg.batch_size):
            batch = shard[i : i + cfg.batch_size]
            acts = forward(batch)
            miner.update(acts, [w.window_id for w in batch], [w.token_ids for w in batch], [w.doc_span for w in batch])
        miner.shards_done.append(shard_id)
        miner.prune_tokens()
        _save_atomic({"fingerprint": key, "miner": miner.state()}, ckpt)
        done_now += 1
        kill_point(COLLECT_SHARDS, done_now)
    bar.close()
    return n_windows


def _meta(cfg: CollectConfig, tok, groups, prefix, n_windows: int, world: int, key: str, content: str) -> dict:
    return {
        "model": cfg.model,
        "tokenizer": getattr(tok, "name_or_path", ""),
        "features_spec": list(cfg.features),
        "groups": [
            {
                "kind": g.kind,
                "layer": g.layer,
                "n_units": len(g.indices),
                "polarities": list(g.polarities),
                "encoder_path": g.encoder_path,
            }
            for g in groups
        ],
        "hook_point": "mlp: input of the MLP output projection; sae/transcoder: encoder output at its hook site",
        "dtype": cfg.dtype,
        "stored_dtype": "float32",
        "normalisation": "none (raw, polarity applied)",
        "window": cfg.window,
        "context_prefix_ids": prefix,
        "context_tokens": cfg.context,
        "out_of_context_context_ids": neutral_context(tok, cfg.context),  # what an out-of-context token follows
        "dataset": cfg.dataset,
        "text_field": cfg.text_field,
        "windows_seen": n_windows,
        "mining": to_dict(cfg.mining),
        "fingerprint": key,
        "config": to_dict(cfg),
        "dataset_content": content,
        "world_size": world,
        "neuroscribe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
