"""The exemplar store: what `collect` writes and every later stage reads.

A store is a folder:
- `meta.json` — schema version, subject model, feature spec, hook points, dtype, window length,
  dataset, windows seen, mining parameters, seed.
- `features.parquet` — one row per feature: `feature` (key, e.g. "mlp/L3/127+"), `kind`, `layer`,
  `index`, `polarity`, `dead`, `max_activation`, `mean`, `variance`, `skewness`, `kurtosis`,
  `n_tokens`, `frac_active`, `quantile_boundaries` (list<float64>), `top_tokens` (list<string>).
- `exemplars.parquet` — one row per exemplar: `feature`, `layer`, `kind`, `split` (explain|score|test),
  `source` (top|quantile|random|hard_negative), `rank`, `quantile`, `window_id`, `tokens`
  (list<string>, control strings escaped), `token_ids` (list<int32>), `activations` (list<float32>,
  raw, polarity applied).
Both Parquet files load with `datasets.load_dataset("parquet", data_files=...)` as well.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from neuroscribe.records import Exemplar, FeatureExemplars, FeatureId, FeatureStats

SCHEMA_VERSION = 1

FEATURE_SCHEMA = pa.schema([
    ("feature", pa.string()), ("kind", pa.string()), ("layer", pa.int32()), ("index", pa.int64()),
    ("polarity", pa.int8()), ("dead", pa.bool_()), ("max_activation", pa.float64()), ("mean", pa.float64()),
    ("variance", pa.float64()), ("skewness", pa.float64()), ("kurtosis", pa.float64()),
    ("n_tokens", pa.int64()), ("frac_active", pa.float64()),
    ("quantile_boundaries", pa.list_(pa.float64())), ("top_tokens", pa.list_(pa.string())),
])
EXEMPLAR_SCHEMA = pa.schema([
    ("feature", pa.string()), ("layer", pa.int32()), ("kind", pa.string()), ("split", pa.string()),
    ("source", pa.string()), ("rank", pa.int32()), ("quantile", pa.int32()), ("window_id", pa.int64()),
    ("tokens", pa.list_(pa.string())), ("token_ids", pa.list_(pa.int32())), ("activations", pa.list_(pa.float32())),
])


class StoreError(ValueError):
    pass


def write_store(path: str | Path, records: Iterable[FeatureExemplars], meta: dict, overwrite: bool = False) -> Path:
    """Write a store atomically: into a sibling temp folder, then renamed over `path`.

    An existing store is never replaced unless `overwrite` is set.
    """
    path = Path(path)
    if (path / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{path} already holds an exemplar store; pass --overwrite to replace it")
    features, exemplars = [], []
    for rec in records:
        f = rec.feature
        features.append({
            "feature": f.key, "kind": f.kind, "layer": f.layer, "index": f.index, "polarity": f.polarity,
            "dead": rec.dead, "max_activation": rec.stats.max_activation, "mean": rec.stats.mean,
            "variance": rec.stats.variance, "skewness": rec.stats.skewness, "kurtosis": rec.stats.kurtosis,
            "n_tokens": rec.stats.n_tokens, "frac_active": rec.stats.frac_active,
            "quantile_boundaries": list(rec.stats.quantile_boundaries), "top_tokens": list(rec.top_tokens),
        })
        for e in rec.exemplars:
            exemplars.append({
                "feature": f.key, "layer": f.layer, "kind": f.kind, "split": e.split, "source": e.source,
                "rank": e.rank, "quantile": e.quantile, "window_id": e.window_id, "tokens": list(e.tokens),
                "token_ids": list(e.token_ids), "activations": list(e.activations),
            })
    tmp = path.with_name(path.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(features, FEATURE_SCHEMA), tmp / "features.parquet")
    pq.write_table(pa.Table.from_pylist(exemplars, EXEMPLAR_SCHEMA), tmp / "exemplars.parquet")
    (tmp / "meta.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2))
    path.mkdir(parents=True, exist_ok=True)
    for name in ("features.parquet", "exemplars.parquet", "meta.json"):  # meta last: it marks a complete store
        (tmp / name).replace(path / name)
    tmp.rmdir()
    return path


class ExemplarStore:
    """Read access to a store folder; rows are grouped into FeatureExemplars on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise StoreError(f"{self.path}: not an exemplar store (no meta.json); run `neuroscribe collect` first")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{meta_path}: schema_version {self.meta.get('schema_version')} != {SCHEMA_VERSION}")
        self._features = {r["feature"]: r for r in pq.read_table(self.path / "features.parquet").to_pylist()}
        self._exemplars: dict[str, list[dict]] | None = None

    def keys(self, include_dead: bool = False) -> list[str]:
        return [k for k, r in self._features.items() if include_dead or not r["dead"]]

    def __len__(self) -> int:
        return len(self._features)

    def _rows(self) -> dict[str, list[dict]]:
        if self._exemplars is None:
            grouped: dict[str, list[dict]] = {}
            for row in pq.read_table(self.path / "exemplars.parquet").to_pylist():
                grouped.setdefault(row["feature"], []).append(row)
            self._exemplars = grouped
        return self._exemplars

    def get(self, key: str) -> FeatureExemplars:
        if key not in self._features:
            raise KeyError(f"{self.path}: no feature {key!r} in this store")
        f = self._features[key]
        exemplars = tuple(
            Exemplar(
                tokens=tuple(r["tokens"]), activations=tuple(r["activations"]), window_id=r["window_id"],
                source=r["source"], split=r["split"], rank=r["rank"], quantile=r["quantile"],
                token_ids=tuple(r["token_ids"]),
            )
            for r in self._rows().get(key, [])
        )
        stats = FeatureStats(
            max_activation=f["max_activation"], mean=f["mean"], variance=f["variance"], skewness=f["skewness"],
            kurtosis=f["kurtosis"], n_tokens=f["n_tokens"], frac_active=f["frac_active"],
            quantile_boundaries=tuple(f["quantile_boundaries"]),
        )
        fid = FeatureId(f["kind"], f["layer"], f["index"], f["polarity"])
        return FeatureExemplars(fid, exemplars, stats, f["dead"], tuple(f["top_tokens"]))

    def features(self, include_dead: bool = False) -> Iterator[FeatureExemplars]:
        for key in self.keys(include_dead):
            yield self.get(key)

    def summary(self) -> dict:
        """Counts a person checks first: features, dead features, exemplars per split and source."""
        rows = [r for group in self._rows().values() for r in group]
        by_split: dict[str, int] = {}
        by_source: dict[str, int] = {}
        for r in rows:
            by_split[r["split"]] = by_split.get(r["split"], 0) + 1
            by_source[r["source"]] = by_source.get(r["source"], 0) + 1
        dead = [k for k, r in self._features.items() if r["dead"]]
        layers: dict[int, int] = {}
        for r in self._features.values():
            layers[r["layer"]] = layers.get(r["layer"], 0) + 1
        return {
            "path": str(self.path), "model": self.meta.get("model"), "features": len(self._features),
            "dead": len(dead), "dead_features": dead, "exemplars": len(rows), "by_split": by_split,
            "by_source": by_source, "features_by_layer": layers, "windows_seen": self.meta.get("windows_seen"),
        }
