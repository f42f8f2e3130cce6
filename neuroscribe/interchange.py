"""Import and export OpenAI neuron-explainer JSON (`automated-interpretability`, module `neuron_explainer`).

Shapes (field names as in that package; every object also carries `"dataclass_name"`, which its
`fast_dataclasses` writes and uses to pick the class back; NaN floats are written as `null` by orjson):
  NeuronRecord{neuron_id: NeuronId{layer_index, neuron_index}, random_sample: [ActivationRecord],
               random_sample_by_quantile: [[ActivationRecord]] | null, quantile_boundaries: [float] | null,
               mean, variance, skewness, kurtosis: float | null,
               most_positive_activation_records: [ActivationRecord]}
  ActivationRecord{tokens: [str], activations: [float], dfa_values?, dfa_target_index?}
  NeuronSimulationResults{neuron_id, scored_explanations: [ScoredExplanation{explanation: str,
               scored_simulation: ScoredSimulation{scored_sequence_simulations, ev_correlation_score, ...}}]}
OpenAI stores one NeuronRecord per file at `<layer>/<neuron>.json` and one NeuronSimulationResults
per line at `<layer>/<neuron>.jsonl`.

Mapping to `FeatureExemplars`: most_positive_activation_records -> source "top", random_sample ->
"random", random_sample_by_quantile[b] -> "quantile" with `quantile=b`; `rank` is the position in its
list. Moments and quantile boundaries go to `FeatureStats`; `max_activation` is the max over the top
records (OpenAI's definition); `n_tokens` (0) and `frac_active` (NaN) are unknown after an import.
Hard negatives have no slot in the format and are not exported (the summary counts them).

Imported records carry no corpus window ids, so each window gets a synthetic id: a 62-bit hash of
its tokens and activations. Identical windows (OpenAI samples top and random independently) share
an id and therefore a split, so the explain and held-out sets stay disjoint. Splits by stride:
  scheme "openai" (default): top records i % 4 = train/calibration/valid/test as in neuron_explainer
    -> explain/score/score/test; random records i % 3 = calibration/valid/test -> score/score/test.
    The explain set is exactly what OpenAI's explainer saw, so scoring its released explanations
    on the score set never reuses an explained record.
  scheme "stride3": every source i % 3 -> explain/score/test.
  Quantile records (unused by OpenAI) are i % 3 -> explain/score/test within each bin in both schemes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.records import (
    Exemplar,
    Explanation,
    FeatureExemplars,
    FeatureId,
    FeatureStats,
    ScoredExplanation,
    SimulatedExemplar,
)

SPLIT_SCHEMES = ("openai", "stride3")
_STRIDE3 = ("explain", "score", "test")
_OPENAI = {"top": ("explain", "score", "score", "test"), "random": ("score", "score", "test")}
OPENAI_EXPLAINER = "openai:released"


class InterchangeError(ValueError):
    """A file that is not valid OpenAI neuron-explainer JSON, or records that cannot be written as it."""


@dataclass(frozen=True)
class ExportSummary:
    records: int
    exemplars: int
    dropped_hard_negatives: int


# ---------------------------------------------------------------- reading


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON) for a .json file (object or list), a .jsonl file, or a folder of them."""
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()),
            key=lambda p: [
                (0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(path).with_suffix("").parts
            ],
        )
        if not files:
            raise InterchangeError(f"{path}: folder holds no .json or .jsonl files")
        for f in files:
            yield from _documents(f)
        return
    if not path.is_file():
        raise InterchangeError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    lines = [(f"{path}:{i + 1}", ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    chunks = lines if path.suffix == ".jsonl" else [(str(path), text)]
    for where, chunk in chunks:
        try:
            doc = json.loads(chunk)
        except json.JSONDecodeError as e:
            raise InterchangeError(f"{where}: not valid JSON ({e})") from None
        for i, item in enumerate(doc if isinstance(doc, list) else [doc]):
            yield (f"{where}[{i}]" if isinstance(doc, list) else where), item


def _obj(value: Any, expected: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise InterchangeError(f"{where}: expected a {expected} object, got {type(value).__name__}")
    name = value.get("dataclass_name")
    if name is not None and name != expected:
        raise InterchangeError(f"{where}: dataclass_name is {name!r}, expected {expected!r}")
    return value


def _field(obj: dict, name: str, where: str) -> Any:
    if name not in obj:
        raise InterchangeError(f"{where}: field {name!r} is missing")
    return obj[name]


def _neuron_id(obj: dict, where: str) -> tuple[int, int]:
    nid = _obj(_field(obj, "neuron_id", where), "NeuronId", f"{where}.neuron_id")
    out = []
    for name in ("layer_index", "neuron_index"):
        v = _field(nid, name, f"{where}.neuron_id")
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InterchangeError(f"{where}.neuron_id.{name}: expected a non-negative integer, got {v!r}")
        out.append(v)
    return out[0], out[1]


def _float_or_nan(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InterchangeError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _activation_record(value: Any, where: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    rec = _obj(value, "ActivationRecord", where)
    tokens, acts = _field(rec, "tokens", where), _field(rec, "activations", where)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InterchangeError(f"{where}.tokens: expected a list of strings")
    if not isinstance(acts, list) or len(acts) != len(tokens):
        n = len(acts) if isinstance(acts, list) else type(acts).__name__
        raise InterchangeError(f"{where}: {len(tokens)} tokens but {n} activations")
    values = tuple(_float_or_nan(a, f"{where}.activations[{i}]") for i, a in enumerate(acts))
    bad = [i for i, a in enumerate(values) if not math.isfinite(a)]
    if bad:
        raise InterchangeError(f"{where}.activations[{bad[0]}]: activation is not finite")
    return tuple(tokens), values


def synthetic_window_id(tokens: tuple[str, ...], activations: tuple[float, ...]) -> int:
    """A stable 62-bit id for a window that has no corpus index: equal windows get equal ids."""
    blob = json.dumps([list(tokens), [repr(a) for a in activations]], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 2


def _split(source: str, i: int, scheme: str) -> str:
    cycle = _OPENAI[source] if scheme == "openai" and source in _OPENAI else _STRIDE3
    return cycle[i % len(cycle)]


def neuron_record_to_features(
    obj: Any, where: str = "record", kind: str = "mlp", polarity: int = 1, split_scheme: str = "openai"
) -> FeatureExemplars:
    """One NeuronRecord (parsed JSON) as FeatureExemplars; see the module docstring for the mapping."""
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, not {split_scheme!r}")
    rec = _obj(obj, "NeuronRecord", where)
    layer, index = _neuron_id(rec, where)
    lists_present = ("most_positive_activation_records", "random_sample", "random_sample_by_quantile")
    if not any(name in rec for name in lists_present):
        raise InterchangeError(f"{where}: no activation records (none of {', '.join(lists_present)})")
    lists: list[tuple[str, int, str, Any]] = [
        ("top", -1, "most_positive_activation_records", rec.get("most_positive_activation_records") or []),
        ("random", -1, "random_sample", rec.get("random_sample") or []),
    ]
    bins = rec.get("random_sample_by_quantile") or []
    if not isinstance(bins, list):
        raise InterchangeError(f"{where}.random_sample_by_quantile: expected a list of lists or null")
    lists += [("quantile", b, f"random_sample_by_quantile[{b}]", records) for b, records in enumerate(bins)]
    split_of: dict[int, str] = {}  # first placement wins, so a repeated window never straddles splits
    exemplars = []
    for source, q, name, records in lists:
        if not isinstance(records, list):
            raise InterchangeError(f"{where}.{name}: expected a list of ActivationRecord")
        for i, r in enumerate(records):
            tokens, acts = _activation_record(r, f"{where}.{name}[{i}]")
            wid = synthetic_window_id(tokens, acts)
            split = split_of.setdefault(wid, _split(source, i, split_scheme))
            exemplars.append(Exemplar(tokens, acts, wid, source=source, split=split, rank=i, quantile=q))
    boundaries = rec.get("quantile_boundaries") or []
    top_max = [max(e.activations) for e in exemplars if e.source == "top" and e.activations]
    stats = FeatureStats(
        max_activation=max(top_max) if top_max else 0.0,
        **{m: _float_or_nan(rec.get(m), f"{where}.{m}") for m in ("mean", "variance", "skewness", "kurtosis")},
        n_tokens=0,
        frac_active=math.nan,
        quantile_boundaries=tuple(_float_or_nan(b, f"{where}.quantile_boundaries") for b in boundaries),
    )
    dead = not top_max or max(top_max) <= 0
    return FeatureExemplars(FeatureId(kind, layer, index, polarity), tuple(exemplars), stats, dead=dead)


def import_neuron_records(
    path: str | Path, kind: str = "mlp", polarity: int = 1, split_scheme: str = "openai"
) -> list[FeatureExemplars]:
    """Read NeuronRecords from a .json file (one or a list), a .jsonl file, or an OpenAI-layout folder."""
    return [
        neuron_record_to_features(obj, where, kind, polarity, split_scheme)
        for where, obj in _documents(Path(path).expanduser())
    ]


def _explanation_text(value: Any, where: str) -> str:
    se = _obj(value, "ScoredExplanation", where)
    text = _field(se, "explanation", where)
    if not isinstance(text, str):
        raise InterchangeError(f"{where}.explanation: expected a string, got {type(text).__name__}")
    return text


def _explanations(path: str | Path, kind: str, polarity: int, explainer: str) -> Iterator[tuple[str, Any, Explanation]]:
    """(where, ScoredExplanation object, Explanation) for every explanation in NeuronSimulationResults files."""
    for where, obj in _documents(Path(path).expanduser()):
        res = _obj(obj, "NeuronSimulationResults", where)
        scored = _field(res, "scored_explanations", where)
        if not isinstance(scored, list):
            raise InterchangeError(f"{where}.scored_explanations: expected a list")
        layer, index = _neuron_id(res, where)
        key = FeatureId(kind, layer, index, polarity).key
        for i, se in enumerate(scored):
            w = f"{where}.scored_explanations[{i}]"
            text = _explanation_text(se, w)
            yield w, se, Explanation(key, text.strip(), explainer, prompt_style="openai", sample_index=i, raw=text)


def import_explanations(
    path: str | Path, kind: str = "mlp", polarity: int = 1, explainer: str = OPENAI_EXPLAINER
) -> list[Explanation]:
    """OpenAI's released explanations (NeuronSimulationResults files) as Explanation records to re-score."""
    return [explanation for _, _, explanation in _explanations(path, kind, polarity, explainer)]


def import_scored_explanations(
    path: str | Path, kind: str = "mlp", polarity: int = 1, explainer: str = OPENAI_EXPLAINER
) -> list[ScoredExplanation]:
    """The same explanations with OpenAI's own score (`ev_correlation_score`; null -> NaN) and simulations."""
    out = []
    for w, se, explanation in _explanations(path, kind, polarity, explainer):
        sim = _obj(_field(se, "scored_simulation", w), "ScoredSimulation", f"{w}.scored_simulation")
        sims = []
        for j, sss in enumerate(sim.get("scored_sequence_simulations") or []):
            ws = f"{w}.scored_simulation.scored_sequence_simulations[{j}]"
            sss = _obj(sss, "ScoredSequenceSimulation", ws)
            seq = _obj(_field(sss, "simulation", ws), "SequenceSimulation", f"{ws}.simulation")
            tokens = tuple(_field(seq, "tokens", f"{ws}.simulation"))
            true = tuple(_float_or_nan(a, f"{ws}.true_activations") for a in _field(sss, "true_activations", ws))
            pred = tuple(
                _float_or_nan(a, f"{ws}.expected_activations") for a in _field(seq, "expected_activations", ws)
            )
            if not len(tokens) == len(true) == len(pred):
                raise InterchangeError(f"{ws}: {len(tokens)} tokens, {len(true)} true and {len(pred)} predicted values")
            sims.append(SimulatedExemplar(synthetic_window_id(tokens, true), "openai", true, pred))
        out.append(
            ScoredExplanation(
                explanation,
                score=_float_or_nan(sim.get("ev_correlation_score"), f"{w}.scored_simulation.ev_correlation_score"),
                simulator=explainer,
                split="openai",
                n_exemplars=len(sims),
                simulations=tuple(sims),
            )
        )
    return out


# ---------------------------------------------------------------- writing


def _null_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _activation_json(e: Exemplar) -> dict:
    acts = [float(a) for a in e.activations]
    return {"tokens": list(e.tokens), "activations": acts, "dataclass_name": "ActivationRecord"}


def features_to_neuron_record(fe: FeatureExemplars) -> dict:
    """One FeatureExemplars as a NeuronRecord object, in the key order neuron_explainer writes."""
    by_rank = lambda src: sorted(fe.select(sources=[src]), key=lambda e: e.rank)  # noqa: E731
    quantile = by_rank("quantile")
    bad = [e for e in quantile if e.quantile < 0]
    if bad:
        raise InterchangeError(f"{fe.feature.key}: quantile exemplar {bad[0].window_id} has no quantile bin")
    bins: list[list[dict]] | None = None
    if quantile or fe.stats.quantile_boundaries:
        bins = [[] for _ in range(max((e.quantile + 1 for e in quantile), default=0))]
        for e in quantile:
            bins[e.quantile].append(_activation_json(e))
    s = fe.stats
    return {
        "neuron_id": {"layer_index": fe.feature.layer, "neuron_index": fe.feature.index, "dataclass_name": "NeuronId"},
        "random_sample": [_activation_json(e) for e in by_rank("random")],
        "random_sample_by_quantile": bins,
        "quantile_boundaries": [float(b) for b in s.quantile_boundaries] if bins is not None else None,
        "mean": _null_nan(s.mean),
        "variance": _null_nan(s.variance),
        "skewness": _null_nan(s.skewness),
        "kurtosis": _null_nan(s.kurtosis),
        "most_positive_activation_records": [_activation_json(e) for e in by_rank("top")],
        "dataclass_name": "NeuronRecord",
    }


def export_neuron_records(records: list[FeatureExemplars], path: str | Path, overwrite: bool = False) -> ExportSummary:
    """Write NeuronRecord JSON: `x.jsonl` (one per line), `x.json` (an object, or a list if several),
    or otherwise a folder in OpenAI's layout `<path>/<layer>/<neuron>.json`. Never clobbers without `overwrite`.
    """
    path = Path(path).expanduser()
    seen: dict[tuple[int, int], str] = {}
    for fe in records:  # NeuronId has no kind or polarity: two features on one (layer, index) would collide
        at = (fe.feature.layer, fe.feature.index)
        if at in seen:
            raise InterchangeError(
                f"{fe.feature.key} and {seen[at]} are both layer {at[0]} neuron {at[1]} in OpenAI's format; "
                "export them separately"
            )
        seen[at] = fe.feature.key
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    docs = [features_to_neuron_record(fe) for fe in records]
    if path.suffix == ".jsonl":
        _write(path, "".join(json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n" for d in docs))
    elif path.suffix == ".json":
        _write(path, json.dumps(docs[0] if len(docs) == 1 else docs, ensure_ascii=False, allow_nan=False))
    else:
        for fe, d in zip(records, docs):
            target = path / str(fe.feature.layer) / f"{fe.feature.index}.json"
            _write(target, json.dumps(d, ensure_ascii=False, allow_nan=False))
    hard = sum(len(fe.select(sources=["hard_negative"])) for fe in records)
    return ExportSummary(len(docs), sum(len(fe.exemplars) for fe in records) - hard, hard)


def _write(target: Path, text: str) -> None:
    """Write through a temporary file so a crash never leaves half a record behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
