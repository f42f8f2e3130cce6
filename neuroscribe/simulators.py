"""One factory for every simulator spec, so explain, score and eval accept the same strings.

Specs:
  hf:MODEL                      prompted all-at-once simulator on a local model (expected value over digits)
  openai:MODEL@URL[,URL...]     the same prompt through an OpenAI-compatible server's echo logprobs
  parsed:openai:MODEL@URL       logprob-free fallback: asks for the numbers and parses them (failures counted)
  finetuned:PATH                a simulator neuroscribe trained (`neuroscribe.train.simulator`)
Scores are cached on disk by (simulator spec, explanation, feature, split, held-out exemplars), so a
rerun simulates nothing twice.
"""

from __future__ import annotations

import hashlib
import json

from neuroscribe.cache import Cache, cache_key
from neuroscribe.records import Explanation, FeatureExemplars, ScoredExplanation, from_json, to_json


def load_simulator(spec: str, cache: Cache | None = None, dtype: str = "float32", batch_size: int = 8):
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        from neuroscribe.models import load_shared, parse_dtype
        from neuroscribe.simulator import LocalSimulator

        model, tok = load_shared(rest, dtype)
        weights = str(parse_dtype(dtype)).removeprefix("torch.")
        # results depend on precision, and the spec keys the score cache
        return LocalSimulator(model, tok, batch_size=batch_size, spec=spec if weights == "float32" else f"{spec}@{weights}")
    if kind == "finetuned" and rest:
        from neuroscribe.finetuned_simulator import load_finetuned_simulator

        return load_finetuned_simulator(rest, dtype=dtype, batch_size=batch_size)
    if kind in ("openai", "parsed") and rest:
        from neuroscribe.backends import load_backend
        from neuroscribe.simulator_http import EchoLogprobSimulator, ParsedNumberSimulator

        if kind == "parsed":
            return ParsedNumberSimulator(load_backend(rest, cache, stage="simulate"))
        return EchoLogprobSimulator(load_backend(spec, cache, stage="simulate"))
    raise ValueError(
        f"simulator spec {spec!r}: expected hf:MODEL, finetuned:PATH, openai:MODEL@URL or parsed:openai:MODEL@URL"
    )


def _held_out_fingerprint(record: FeatureExemplars, split: str) -> str:
    rows = [(e.window_id, e.source, e.tokens, e.activations) for e in record.select(split=split)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]


def cached_score(simulator, explanation: Explanation, record: FeatureExemplars, split: str,
                 cache: Cache | None, stage: str = "score") -> ScoredExplanation:
    """simulate_and_score, looked up in / stored to the disk cache."""
    from neuroscribe.simulator import simulate_and_score

    if cache is None or not explanation.ok:
        return simulate_and_score(simulator, explanation, record, split)
    key = cache_key("simulate", simulator.spec, {
        "explanation": explanation.text, "feature": record.feature.key, "split": split,
        "held_out": _held_out_fingerprint(record, split),
    })
    hit = cache.get(key)
    if hit is not None:
        cache.record_hit(key, kind="simulate", model=simulator.spec, stage=stage)
        return ScoredExplanation(**{**from_json(ScoredExplanation, hit).__dict__, "explanation": explanation})
    scored = simulate_and_score(simulator, explanation, record, split)
    n_tokens = sum(len(s.predicted) for s in scored.simulations)
    cache.put(key, to_json(scored), kind="simulate", model=simulator.spec, stage=stage, tokens_in=n_tokens)
    return scored
