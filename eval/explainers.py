"""The explainers eval compares, and how each writes its one explanation per feature.

- A model explainer (student, its base model before training, or a teacher given as a spec) writes k
  samples at the configured temperature (best-of-k picks among them on the selection split) and one
  greedy sample (temperature 0: best-of-1, so its number does not depend on a sampling seed).
- A teacher from an explain run: its candidates as scored there (best-of-k), and its sample 0
  (best-of-1, drawn at the explain run's temperature, which the report states).
- Reference explanations from a file (planted features' true rules: the ceiling).
- Baselines: the explain split's peak tokens; another feature's teacher explanation (a lower bound);
  the null explanation "" (the simulator's prior: the real floor).

Cost counts tokens of cached calls too (a Completion keeps them), so a rerun reports the same tokens
and USD per explanation; latency only counts work done in this run.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.backends import ChatRequest, SamplingParams, load_backend
from neuroscribe.cache import Cache
from neuroscribe.distill.score import read_explanations
from neuroscribe.models import load_shared
from neuroscribe.prompts import PROMPT_VERSION, explainer_exemplars, explainer_messages, parse_explanation
from neuroscribe.records import Explanation, FeatureExemplars, ScoredExplanation, SplitNames, best_candidate
from neuroscribe.runs.explain import CANDIDATES, META, read_explain_run, read_usage
from neuroscribe.specs import BACKEND_KINDS, Spec, split_spec

from .results import Cost

NULL_EXPLANATION = ""  # says nothing: what the simulator predicts from its prior alone


def backend_spec(spec: str) -> str:
    """A bare model id, folder or adapter folder means the local transformers backend."""
    return spec if split_spec(spec)[0] in BACKEND_KINDS.names else f"hf:{spec}"


def explainer_backend(spec: str, cache: Cache, stage: str, dtype: str = "float32", limits=None):
    """The backend a spec names; a local model is loaded once per process (shared with the simulator)."""
    parsed = Spec.parse(backend_spec(spec), BACKEND_KINDS)
    if parsed.kind == "hf":
        return load_backend(parsed, cache, stage=stage, loaded=load_shared(parsed.model, dtype))
    return load_backend(parsed, cache, limits, stage=stage)


# ------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class Samples:
    """One model explainer's explanations: k samples and one greedy sample per feature, with costs."""

    by_feature: dict[str, tuple[Explanation, ...]]  # the k samples (best-of-k chooses among them)
    greedy: dict[str, Explanation]  # best-of-1
    greedy_cost: Cost
    all_cost: Cost  # the k samples


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
    max_exemplars: int | None,
    stage: str,
    greedy_only: bool = False,
) -> Samples:
    """k samples at `params` (none with `greedy_only`) and one greedy sample per feature."""
    prompts = {key: explainer_messages(r, style, max_exemplars=max_exemplars) for key, r in records.items()}
    greedy_params = SamplingParams(temperature=0.0, max_tokens=params.max_tokens, seed=params.seed)
    greedy, greedy_cost = _generate(backend, prompts, range(1), greedy_params, stage)
    sampled, all_cost = _generate(backend, prompts, range(0 if greedy_only else k), params, stage)
    n = 0 if greedy_only else k
    by_feature = {
        key: tuple(
            _explanation(key, c.text, i, backend.spec, style) for i, c in enumerate(sampled[j * n : (j + 1) * n])
        )
        for j, key in enumerate(prompts)
    }
    return Samples(
        by_feature,
        {key: _explanation(key, greedy[j].text, 0, backend.spec, style) for j, key in enumerate(prompts)},
        greedy_cost,
        all_cost,
    )


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


def best_or_first(candidates: tuple[ScoredExplanation, ...]) -> ScoredExplanation:
    """Best-of-k's winner (`records.best_candidate`); the first sample when no candidate has a finite score."""
    return best_candidate(candidates) or candidates[0]


# ------------------------------------------------------------------------------ teacher


@dataclass(frozen=True)
class TeacherPick:
    candidates: dict[str, tuple[ScoredExplanation, ...]]  # on the selection split
    cost: Cost
    provenance: dict


def teacher_from_results(folder: str | Path, keys: list[str], splits: SplitNames = SplitNames()) -> TeacherPick:
    """The explain run's candidates for `keys`; refuses a run that selected on the report split."""
    run = read_explain_run(folder)
    meta = run.meta
    if meta.split != splits.select:
        raise ValueError(
            f"{run.path / META}: field split is {meta.split!r}; teacher candidates must be "
            f"scored on {splits.select!r} so the winner can be reported on {splits.report!r}"
        )
    missing = [k for k in keys if k not in run.by_feature]
    if missing:
        raise KeyError(
            f"{run.path / CANDIDATES}: no teacher candidates for {len(missing)} eval feature(s) "
            f"{missing[:5]}; explain those features first"
        )
    usage = read_usage(folder).get("explain", {})
    n = max(meta.n_features or len(run.by_feature), 1)
    k = meta.k
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
        "teacher": meta.teacher,
        "teacher_results": str(run.path),
        "teacher_selection_simulator": meta.simulator,
        "teacher_store": meta.store,
        "teacher_store_fingerprint": meta.store_fingerprint,
        "teacher_temperature": meta.temperature,
        "teacher_k": k,
    }
    return TeacherPick(dict(run.by_feature), cost, provenance)


def first_sample(candidates: tuple[ScoredExplanation, ...]) -> ScoredExplanation:
    """A teacher run's best-of-1: its sample 0 (never dropped as a duplicate: it comes first)."""
    return min(candidates, key=lambda c: c.explanation.sample_index)


# ------------------------------------------------------------------------------ references and baselines


def reference_explanations(path: str | Path, keys: list[str], label: str) -> dict[str, Explanation]:
    """Known-true explanations (e.g. planted rules) from a JSONL {feature, explanation} file, for the eval
    features it names (a real unit has none); a file naming none of them is an error."""

    by_key = {e.feature: e for e in read_explanations(path)}
    found = {
        k: Explanation(k, by_key[k].text, f"reference:{label}", prompt_style="reference") for k in keys if k in by_key
    }
    if not found:
        raise KeyError(f"{path}: names none of the {len(keys)} eval features")
    return found


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


def null_explanation(key: str) -> Explanation:
    return Explanation(key, NULL_EXPLANATION, "baseline:null", prompt_style="baseline")
