"""The explainers eval compares: sampling k explanations from a model, the teacher's candidates from a
distill run, and the two baselines (peak tokens of the explain split; another feature's explanation).

Best-of-1 is the first of the k samples; it is generated in its own call so its latency is measured
alone. Cost counts tokens of cached calls too (a Completion keeps them), so a rerun reports the
same tokens and USD per explanation; latency only counts work done in this run.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.backends import KINDS, ChatRequest, SamplingParams, load_backend
from neuroscribe.cache import Cache
from neuroscribe.prompts import PROMPT_VERSION, explainer_exemplars, explainer_messages, parse_explanation
from neuroscribe.records import Explanation, FeatureExemplars, ScoredExplanation
from neuroscribe.runs.explain import read_explain_run, read_usage

from .results import REPORT_SPLIT, SELECTION_SPLIT, Cost


def backend_spec(spec: str) -> str:
    """A bare model id, folder or adapter folder means the local transformers backend."""
    return spec if spec.partition(":")[0].strip().lower() in KINDS else f"hf:{spec}"


def explainer_backend(spec: str, cache: Cache, stage: str, dtype: str = "float32"):
    """The backend a spec names; a local model is loaded once per process (shared with the simulator)."""
    spec = backend_spec(spec)
    if spec.startswith("hf:"):
        from neuroscribe.models import load_shared

        return load_backend(spec, cache, stage=stage, loaded=load_shared(spec[3:], dtype))
    return load_backend(spec, cache, stage=stage)


# ------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class Samples:
    """k explanations per feature from one explainer, with what producing them cost."""

    by_feature: dict[str, tuple[Explanation, ...]]
    first: Cost  # sample 0 of every feature (best-of-1)
    all: Cost  # every sample (best-of-k, before selection)


def _generate(backend, prompts: dict[str, list[dict]], indices: range, params: SamplingParams, stage: str):
    requests = [ChatRequest(tuple(prompts[key]), params, sample_index=i) for key in prompts for i in indices]
    start = time.perf_counter()
    completions = backend.generate(requests, stage=stage) if requests else []
    seconds = time.perf_counter() - start
    fresh = [c for c in completions if not c.cached]
    tin, tout = sum(c.tokens_in for c in completions), sum(c.tokens_out for c in completions)
    cost = Cost(
        len(indices),
        len(prompts),
        len(fresh),
        len(completions) - len(fresh),
        tin,
        tout,
        backend.cost(tin, tout),
        seconds if fresh else None,
    )
    return completions, cost


def sample_explanations(
    backend,
    records: dict[str, FeatureExemplars],
    k: int,
    params: SamplingParams,
    style: str,
    max_exemplars: int,
    stage: str,
) -> Samples:
    """k explanations per feature; sample 0 is generated (and timed) on its own for best-of-1."""
    prompts = {key: explainer_messages(r, style, max_exemplars=max_exemplars) for key, r in records.items()}
    first, first_cost = _generate(backend, prompts, range(1), params, stage)
    rest, rest_cost = _generate(backend, prompts, range(1, k), params, stage)
    by_feature = {}
    for j, key in enumerate(prompts):
        completions = [first[j], *rest[j * (k - 1) : (j + 1) * (k - 1)]]
        by_feature[key] = tuple(_explanation(key, c.text, i, backend.spec, style) for i, c in enumerate(completions))
    return Samples(by_feature, first_cost, _add(first_cost, rest_cost, k))


def _explanation(key: str, raw: str, index: int, explainer: str, style: str) -> Explanation:
    parsed = parse_explanation(raw)
    return Explanation(
        feature=key,
        text=parsed.text,
        explainer=explainer,
        prompt_style=style,
        prompt_version=PROMPT_VERSION,
        sample_index=index,
        raw=raw,
        ok=parsed.ok,
        error=parsed.error,
    )


def _add(a: Cost, b: Cost, samples: int) -> Cost:
    usd = None if a.usd is None or b.usd is None else a.usd + b.usd
    seconds = None if a.seconds is None and b.seconds is None else (a.seconds or 0.0) + (b.seconds or 0.0)
    return Cost(
        samples,
        a.features,
        a.fresh_calls + b.fresh_calls,
        a.cached_calls + b.cached_calls,
        a.tokens_in + b.tokens_in,
        a.tokens_out + b.tokens_out,
        usd,
        seconds,
    )


def best_or_first(candidates: tuple[ScoredExplanation, ...]) -> ScoredExplanation:
    """The highest finite selection score (ties: lowest sample index); the first sample if none is finite."""
    finite = [c for c in candidates if c.explanation.ok and math.isfinite(c.score)]
    return max(finite, key=lambda c: (c.score, -c.explanation.sample_index)) if finite else candidates[0]


# ------------------------------------------------------------------------------ teacher


@dataclass(frozen=True)
class TeacherPick:
    candidates: dict[str, tuple[ScoredExplanation, ...]]  # on the selection split
    cost: Cost
    provenance: dict


def teacher_from_results(folder: str | Path, keys: list[str]) -> TeacherPick:
    """The explain run's candidates for `keys`; refuses a run that selected on the report split."""
    run = read_explain_run(folder)
    meta = run.meta
    if meta.get("split") != SELECTION_SPLIT:
        raise ValueError(
            f"{run.path / 'meta.json'}: field split is {meta.get('split')!r}; teacher candidates must be "
            f"scored on {SELECTION_SPLIT!r} so the winner can be reported on {REPORT_SPLIT!r}"
        )
    missing = [k for k in keys if k not in run.by_feature]
    if missing:
        raise KeyError(
            f"{run.path / 'candidates.jsonl'}: no teacher candidates for {len(missing)} eval feature(s) "
            f"{missing[:5]}; explain those features first"
        )
    usage = read_usage(folder).get("explain", {})
    n = max(int(meta.get("n_features") or len(run.by_feature)), 1)
    k = int(meta.get("k", 1))
    usd = usage.get("usd", 0.0) if not usage.get("unpriced_calls") else None
    cost = Cost(
        k,
        n,
        usage.get("calls", 0),
        usage.get("cached_hits", 0),
        usage.get("tokens_in", 0),
        usage.get("tokens_out", 0),
        usd,
        None,
        source=f"{run.path}/usage.json (the explain run)",
    )
    provenance = {
        "teacher": meta.get("teacher"),
        "teacher_results": str(run.path),
        "teacher_selection_simulator": meta.get("simulator"),
        "teacher_store": meta.get("store"),
        "teacher_store_fingerprint": meta.get("store_fingerprint"),
    }
    return TeacherPick(dict(run.by_feature), cost, provenance)


# ------------------------------------------------------------------------------ baselines


def top_tokens_explanation(record: FeatureExemplars, n_tokens: int = 3) -> Explanation:
    """'the tokens " x", "y"': the most frequent peak tokens of the explain-split positives.

    Only the explain split is read, like any explainer (the store's `top_tokens` also see held-out windows).
    """
    positives, _ = explainer_exemplars(record)
    peaks = Counter()
    for e in positives:
        peak = max(range(len(e.activations)), key=e.activations.__getitem__)
        if e.tokens[peak].strip():
            peaks[e.tokens[peak]] += 1
    tokens = [t for t, _ in peaks.most_common(n_tokens)]  # ties keep first-seen order
    noun = "token" if len(tokens) == 1 else "tokens"
    text = f"the {noun} " + ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens) if tokens else ""
    return Explanation(
        record.feature.key,
        text,
        "baseline:top-tokens",
        prompt_style="heuristic",
        ok=bool(tokens),
        error="" if tokens else "no non-blank peak token in the explain split",
    )


def random_other_explanation(key: str, pool: dict[str, Explanation], seed: int) -> Explanation | None:
    """The explanation of another feature, drawn with a per-feature seed (stable as features come and go)."""
    others = sorted(k for k, e in pool.items() if k != key and e.ok and e.text)
    if not others:
        return None
    other = random.Random(f"{seed}:{key}").choice(others)
    return Explanation(key, pool[other].text, f"baseline:random-other-feature({other})", prompt_style="baseline")
