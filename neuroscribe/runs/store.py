"""The exemplar store: what `collect` writes (`write_tables`) and every later stage reads (`ExemplarStore`).

A store is a folder:
- `meta.json` — schema version, subject model, feature spec, hook points, dtype, window length,
  dataset, windows seen, mining parameters (with the sampling protocol, `mining.protocol`), seed.
- `features.parquet` — one row per feature: `feature` (key, e.g. "mlp/L3/127+"), `kind`, `layer`,
  `index`, `polarity`, `dead`, `max_activation`, `mean`, `variance`, `skewness`, `kurtosis`,
  `n_tokens`, `frac_active`, `quantile_boundaries` (list<float64>), `top_tokens` (list<string>).
- `exemplars.parquet` — one row per (feature, source, window): `feature`, `layer`, `kind`, `split`
  (explain|score|test), `source` (`records.SOURCES`: top|quantile|interval|random|inactive|hard_negative|
  other_context|out_of_context), `rank`, `quantile` (the quantile or interval bin), `window_id` (an
  out_of_context row is one token read alone: -1 - its token id), `doc_first`/`doc_last` (the corpus
  documents the window touches; -1: none), `tokens`
  (list<string>, control strings escaped, joining back to the window's text), `token_ids`
  (list<int32>), `activations` (list<float32>, raw, polarity applied). A window may appear under
  several sources of one feature (a random window that is also a top one); it then has one split.
- `outputs.parquet` (only after `collect --output-side`) — one row per feature: `feature`, and the token
  texts it `promoted` / `suppressed` through the unembedding and that `raised` / `lowered` the most
  probability when amplified (list<string> each; `neuroscribe.output_side`).
The Parquet files load with `datasets.load_dataset("parquet", data_files=...)` as well.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neuroscribe.protocols import DEFAULT_PROTOCOL
from neuroscribe.records import (
    POSITIVE_SOURCES,
    SPLITS,
    Exemplar,
    FeatureExemplars,
    FeatureId,
    FeatureStats,
    OutputSide,
    SplitNames,
    insufficiency,
)
from neuroscribe.runs.files import disk_error, file_digest, read_json, write_json

SCHEMA_VERSION = 2
META, FEATURES, EXEMPLARS, OUTPUTS = "meta.json", "features.parquet", "exemplars.parquet", "outputs.parquet"

FEATURE_SCHEMA = pa.schema(
    [
        ("feature", pa.string()),
        ("kind", pa.string()),
        ("layer", pa.int32()),
        ("index", pa.int64()),
        ("polarity", pa.int8()),
        ("dead", pa.bool_()),
        ("max_activation", pa.float64()),
        ("mean", pa.float64()),
        ("variance", pa.float64()),
        ("skewness", pa.float64()),
        ("kurtosis", pa.float64()),
        ("n_tokens", pa.int64()),
        ("frac_active", pa.float64()),
        ("quantile_boundaries", pa.list_(pa.float64())),
        ("top_tokens", pa.list_(pa.string())),
    ]
)
EXEMPLAR_SCHEMA = pa.schema(
    [
        ("feature", pa.string()),
        ("layer", pa.int32()),
        ("kind", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("rank", pa.int32()),
        ("quantile", pa.int32()),
        ("window_id", pa.int64()),
        ("doc_first", pa.int64()),
        ("doc_last", pa.int64()),
        ("tokens", pa.list_(pa.string())),
        ("token_ids", pa.list_(pa.int32())),
        ("activations", pa.list_(pa.float32())),
    ]
)
OUTPUT_FIELDS = ("promoted", "suppressed", "raised", "lowered")
OUTPUT_SCHEMA = pa.schema([("feature", pa.string())] + [(n, pa.list_(pa.string())) for n in OUTPUT_FIELDS])
SCALARS = ("feature", "layer", "kind", "split", "source", "rank", "quantile", "window_id", "doc_first", "doc_last")


def is_store(folder: str | Path) -> bool:
    """A finished store: collect writes meta.json last."""
    return (Path(folder) / META).is_file()


class StoreError(ValueError):
    """A store folder or one of its files is missing, garbled, or of another schema."""


def list_column(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A list<value_type> column from a 2-D array [rows, T] without a per-row Python loop."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=value_type))


def exemplar_table(scalars: dict, tokens: pa.Array, token_ids: pa.Array, activations: pa.Array) -> pa.Table:
    """The exemplar table from scalar columns (lists, numpy or Arrow arrays) and the three list columns.
    `tokens` may hold dictionary-encoded strings (no string copied per token; written to Parquet as its
    dictionary encoding, read back as plain strings)."""
    cols = {}
    for name in SCALARS:
        kind, value = EXEMPLAR_SCHEMA.field(name).type, scalars[name]
        cols[name] = value.cast(kind) if isinstance(value, pa.Array) else pa.array(value, type=kind)
    cols.update(tokens=tokens, token_ids=token_ids, activations=activations)
    schema = EXEMPLAR_SCHEMA.set(EXEMPLAR_SCHEMA.get_field_index("tokens"), pa.field("tokens", tokens.type))
    return pa.table(cols, schema=schema)


def feature_row(feature: FeatureId, stats: FeatureStats, dead: bool, top_tokens: Sequence[str]) -> dict:
    """One row of features.parquet (the schema's fields, in order)."""
    return {
        "feature": feature.key,
        "kind": feature.kind,
        "layer": feature.layer,
        "index": feature.index,
        "polarity": feature.polarity,
        "dead": dead,
        "max_activation": stats.max_activation,
        "mean": stats.mean,
        "variance": stats.variance,
        "skewness": stats.skewness,
        "kurtosis": stats.kurtosis,
        "n_tokens": stats.n_tokens,
        "frac_active": stats.frac_active,
        "quantile_boundaries": list(stats.quantile_boundaries),
        "top_tokens": list(top_tokens),
    }


def write_store(path: str | Path, records: Iterable[FeatureExemplars], meta: dict, overwrite: bool = False) -> Path:
    """Write FeatureExemplars records as a store (see `write_tables`)."""
    records = list(records)
    rows = [(r.feature, e) for r in records for e in r.exemplars]
    scalars = {
        "feature": [f.key for f, _ in rows],
        "layer": [f.layer for f, _ in rows],
        "kind": [f.kind for f, _ in rows],
        "split": [e.split for _, e in rows],
        "source": [e.source for _, e in rows],
        "rank": [e.rank for _, e in rows],
        "quantile": [e.quantile for _, e in rows],
        "window_id": [e.window_id for _, e in rows],
        "doc_first": [e.doc_span[0] for _, e in rows],
        "doc_last": [e.doc_span[1] for _, e in rows],
    }
    table = exemplar_table(
        scalars,
        pa.array([list(e.tokens) for _, e in rows], pa.list_(pa.string())),
        pa.array([list(e.token_ids) for _, e in rows], pa.list_(pa.int32())),
        pa.array([list(e.activations) for _, e in rows], pa.list_(pa.float32())),
    )
    rows = [feature_row(r.feature, r.stats, r.dead, r.top_tokens) for r in records]
    return write_tables(path, pa.Table.from_pylist(rows, FEATURE_SCHEMA), table, meta, overwrite)


def output_table(outputs: dict[FeatureId, OutputSide]) -> pa.Table:
    rows = [{"feature": f.key, **{n: list(getattr(o, n)) for n in OUTPUT_FIELDS}} for f, o in outputs.items()]
    return pa.Table.from_pylist(rows, OUTPUT_SCHEMA)


def write_tables(
    path: str | Path,
    features: pa.Table,
    exemplars: pa.Table,
    meta: dict,
    overwrite: bool = False,
    outputs: pa.Table | None = None,
) -> Path:
    """Write a store atomically: into a sibling temp folder, then moved into `path` (meta.json last,
    as it marks a complete store). An existing store is never replaced unless `overwrite` is set."""
    path = Path(path)
    if (path / META).exists() and not overwrite:
        raise FileExistsError(f"{path} already holds an exemplar store; pass --overwrite to replace it")
    tmp = path.with_name(f".{path.name}.writing.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        pq.write_table(features, tmp / FEATURES)
        # statistics only where a reader filters (the scalars); on the list columns they cost a third of the write
        # no Arrow schema stored: a dictionary-encoded tokens column reads back as plain strings
        pq.write_table(exemplars, tmp / EXEMPLARS, write_statistics=list(SCALARS), store_schema=False)
        if outputs is not None:
            pq.write_table(outputs, tmp / OUTPUTS)
        write_json(tmp / META, {"schema_version": SCHEMA_VERSION, **meta})
        path.mkdir(parents=True, exist_ok=True)
        (path / OUTPUTS).unlink(missing_ok=True)  # a replaced store never keeps the old one's outputs
        for name in (FEATURES, EXEMPLARS, *([OUTPUTS] if outputs is not None else []), META):
            (tmp / name).replace(path / name)
    except OSError as err:
        raise disk_error(err, path) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """A Parquet file with every column of `schema`; one error naming the file (and column) otherwise."""
    if not path.is_file():
        raise StoreError(f"{path}: missing; the store is incomplete (rerun `neuroscribe collect`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        reason = " ".join(str(err).split())  # Arrow's messages span lines; the error is one
        raise StoreError(f"{path}: not a readable Parquet file ({reason})") from None
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise StoreError(f"{path}: column(s) {missing} missing (not a neuroscribe store of schema {SCHEMA_VERSION})")
    for name in schema.names:  # a column of another type would fail far from here, without the file's name
        want, got = schema.field(name).type, table.schema.field(name).type
        if got != want and not (pa.types.is_integer(want) and pa.types.is_integer(got)):
            raise StoreError(f"{path}: field {name} has type {got}, expected {want}")
    return table


def _mining(meta: dict, where: Path) -> dict:
    """meta.json's `mining` block (absent in stores written by hand: {}), checked where later code trusts it."""
    mining = meta.get("mining", {})
    if not isinstance(mining, dict):
        raise StoreError(f"{where}: field 'mining' must be an object, got {type(mining).__name__}")
    if not isinstance(mining.get("protocol", DEFAULT_PROTOCOL), str):
        raise StoreError(f"{where}: field 'mining.protocol' must be a string")
    splits = mining.get("splits", SPLITS)
    if not isinstance(splits, list | tuple) or len(splits) < 2 or not all(isinstance(s, str) for s in splits):
        raise StoreError(f"{where}: field 'mining.splits' must be a list of at least two split names")
    return mining


class ExemplarStore:
    """Read access to a store folder; rows are grouped into FeatureExemplars on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.exists():
            raise StoreError(f"{self.path}: not an exemplar store (no {META}); run `neuroscribe collect` first")
        try:
            self.meta = read_json(meta_path)
        except ValueError as err:
            raise StoreError(str(err)) from None
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{meta_path}: field schema_version is {self.meta.get('schema_version')!r}, "
                f"this neuroscribe reads {SCHEMA_VERSION}"
            )
        self.mining = _mining(self.meta, meta_path)
        self.protocol = self.mining.get("protocol", DEFAULT_PROTOCOL)
        self.split_names = SplitNames.of(self.mining.get("splits", SPLITS))
        self.subject_model: str | None = self.meta.get("model")  # None: a store written by hand without one
        self._features = {r["feature"]: r for r in _read_table(self.path / FEATURES, FEATURE_SCHEMA).to_pylist()}
        self._table: pa.Table | None = None
        self._rows_of: dict[str, np.ndarray] = {}
        self._outputs = {}
        if (self.path / OUTPUTS).exists():
            for r in _read_table(self.path / OUTPUTS, OUTPUT_SCHEMA).to_pylist():
                self._outputs[r["feature"]] = OutputSide(*(tuple(r[n]) for n in OUTPUT_FIELDS))

    @property
    def fingerprint(self) -> str:
        """What identifies this store's content: collect's fingerprint, else a hash of its files."""
        return self.meta.get("fingerprint") or file_digest([self.path / FEATURES, self.path / EXEMPLARS])

    def keys(self, include_dead: bool = False) -> list[str]:
        return [k for k, r in self._features.items() if include_dead or not r["dead"]]

    def __len__(self) -> int:
        return len(self._features)

    def _exemplars(self) -> pa.Table:
        """The exemplar table, read once, with the row indices of every feature."""
        if self._table is None:
            self._table = _read_table(self.path / EXEMPLARS, EXEMPLAR_SCHEMA)
            keys = self._table.column("feature").to_numpy(zero_copy_only=False).astype(str)
            names, inverse = np.unique(keys, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
            self._rows_of = {n: order[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
        return self._table

    def get(self, key: str) -> FeatureExemplars:
        if key not in self._features:
            raise KeyError(f"{self.path}: no feature {key!r} in this store")
        f = self._features[key]
        exemplars = tuple(
            Exemplar(
                tokens=tuple(r["tokens"]),
                activations=tuple(r["activations"]),
                window_id=r["window_id"],
                source=r["source"],
                split=r["split"],
                rank=r["rank"],
                quantile=r["quantile"],
                token_ids=tuple(r["token_ids"]),
                doc_span=(r["doc_first"], r["doc_last"]),
            )
            for r in self._exemplars().take(self._rows_of.get(key, np.array([], dtype=np.int64))).to_pylist()
        )
        stats = FeatureStats(
            max_activation=f["max_activation"],
            mean=f["mean"],
            variance=f["variance"],
            skewness=f["skewness"],
            kurtosis=f["kurtosis"],
            n_tokens=f["n_tokens"],
            frac_active=f["frac_active"],
            quantile_boundaries=tuple(f["quantile_boundaries"]),
        )
        fid = FeatureId(f["kind"], f["layer"], f["index"], f["polarity"])
        return FeatureExemplars(
            fid, exemplars, stats, f["dead"], tuple(f["top_tokens"]), self._outputs.get(key), self.protocol
        )

    def features(self, include_dead: bool = False) -> Iterator[FeatureExemplars]:
        for key in self.keys(include_dead):
            yield self.get(key)

    def summary(self) -> dict:
        """Counts a person checks first: features, dead features, exemplars per split and source."""
        table = self._exemplars()
        by_split = {r["values"]: r["counts"] for r in table.column("split").value_counts().to_pylist()}
        by_source = {r["values"]: r["counts"] for r in table.column("source").value_counts().to_pylist()}
        dead = [k for k, r in self._features.items() if r["dead"]]
        layers: dict[int, int] = {}
        for r in self._features.values():
            layers[r["layer"]] = layers.get(r["layer"], 0) + 1
        return {
            "path": str(self.path),
            "model": self.subject_model,
            "protocol": self.protocol,
            "features": len(self._features),
            "dead": len(dead),
            "dead_features": dead,
            "exemplars": table.num_rows,
            "by_split": by_split,
            "by_source": by_source,
            "features_by_layer": layers,
            "windows_seen": self.meta.get("windows_seen"),
            "insufficient": self.insufficient(),
        }

    def insufficient(self) -> dict[str, dict[str, str]]:
        """Per held-out split, the live features it cannot score -> why (`records.insufficiency`)."""
        table = self._exemplars()
        counts = table.group_by(["feature", "split", "source"]).aggregate([("window_id", "count")]).to_pylist()
        by: dict[tuple[str, str], dict[str, int]] = {}
        for r in counts:
            by.setdefault((r["feature"], r["split"]), {})[r["source"]] = r["window_id_count"]
        splits = list(self.mining.get("splits", SPLITS)[1:])
        out: dict[str, dict[str, str]] = {s: {} for s in splits}
        for key in self.keys():
            for split in splits:
                n = by.get((key, split), {})
                reason = insufficiency(sum(n.get(s, 0) for s in POSITIVE_SOURCES), n.get("random", 0))
                if reason:
                    out[split][key] = reason
        return out
