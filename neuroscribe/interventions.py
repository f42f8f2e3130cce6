"""Scoring an explanation by intervention: does it predict what amplifying the feature does?

The subject continues `output_side.NEUTRAL_PROMPTS` greedily twice, as is and with the feature
amplified (`steer` x its max activation at its own site, every position, `output_side.Writer`).
Two scores per explanation, both with chance at 0.5:
- **judge**: a judge model reads the explanation and the two continuations of a prompt (as A and B,
  each pair shown in both orders) and is asked which one was written with the feature amplified; its
  probability for the steered one is read from the logits of " A" / " B". `judge_accuracy` is the
  fraction of (pair, order) items where the steered continuation gets more than half (balanced by
  construction: each order once); `judge_auroc` the AUROC of that probability over all continuations
  (label: steered).
- **named tokens**: tokens the explanation names (every quoted string, and every word of 3+ letters
  not in `_STOP`, first token of each, with and without a leading space) and how far amplifying the
  feature raises them: the percentile of their mean log-probability change (over every position of
  every prompt) among the whole vocabulary's (1 = raised more than any other token).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sklearn.metrics import roc_auc_score

from neuroscribe.output_side import (
    NEUTRAL_PROMPTS,
    Writer,
    _added,
    _prompt_batch,
    mean_logprob_change,
    mean_logprobs,
    steer_amount,
)

JUDGE_PROMPT = (
    "A neuron of a language model is described as: {explanation}\n\n"
    "The model continued the same text twice; one of the two continuations was written while this "
    "neuron was strongly amplified.\n\nText: {prompt}\nA: {a}\nB: {b}\n\n"
    "Which continuation was written with the neuron amplified? Answer A or B.\nAnswer:"
)
_STOP_WORDS = (  # words explanations use about any feature
    "the and for with that this from into are was were not but any all its has have words word token tokens "
    "text unit neuron feature fires active activates activation when which such like their them they"
)
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class Continuations:
    """Greedy continuations of each prompt, unsteered and steered, and the per-token log-prob change."""

    prompts: tuple[str, ...]
    base: tuple[str, ...]
    steered: tuple[str, ...]
    logprob_change: torch.Tensor  # [V] `output_side.mean_logprob_change`: the token change of the output side


@dataclass(frozen=True)
class InterventionScore:
    judge_accuracy: float
    judge_auroc: float
    named_token_percentile: float  # nan when the explanation names no token
    named_tokens: tuple[str, ...]


@torch.no_grad()
def continuations(
    model, tok, writer: Writer, row: int, amount: float, max_new_tokens: int = 12, prompts=NEUTRAL_PROMPTS
) -> Continuations:
    """Both continuations of every prompt for feature row `row` of `writer`, amplified by `amount` units."""
    device = next(model.parameters()).device
    delta = writer.steer[row] * float(amount)

    def generate() -> list[str]:
        texts = []
        for p in prompts:
            ids = torch.tensor([tok(p)["input_ids"]], device=device)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return texts

    ids, mask = _prompt_batch(tok, prompts, device)
    base = generate()
    with _added(writer, delta):
        steered = generate()
    change = mean_logprob_change(model, ids, mask, writer, delta, mean_logprobs(model, ids, mask))
    return Continuations(tuple(prompts), tuple(base), tuple(steered), change.cpu())


def named_tokens(explanation: str) -> list[str]:
    """What an explanation names (module doc): quoted strings first, then content words."""
    quoted = re.findall(r"[\"'\u201c\u2018]([^\"'\u201d\u2019]{1,30})[\"'\u201d\u2019]", explanation)
    words = [w for w in re.findall(r"[A-Za-z]{3,}", explanation) if w.lower() not in _STOP]
    seen: dict[str, None] = {}
    for t in [*quoted, *words]:
        seen.setdefault(t, None)
    return list(seen)


def named_token_percentile(tok, explanation: str, change: torch.Tensor) -> tuple[float, tuple[str, ...]]:
    """(percentile of the named tokens' mean log-prob change in the vocabulary's, the names used)."""
    names = named_tokens(explanation)
    ids = sorted(
        {
            pieces[0]
            for name in names
            for text in (name, " " + name)
            if (pieces := tok(text, add_special_tokens=False)["input_ids"])
        }
    )
    if not ids:
        return float("nan"), ()
    mean = float(change[ids].mean())
    return float((change < mean).float().mean()), tuple(names)


@torch.no_grad()
def judge_scores(judge, judge_tok, explanation: str, cont: Continuations, seed: int = 0) -> tuple[float, float]:
    """(accuracy, AUROC) of the judge telling the steered continuation from the unsteered one (module doc)."""
    device = next(judge.parameters()).device
    a_id, b_id = (judge_tok(x, add_special_tokens=False)["input_ids"][-1] for x in (" A", " B"))
    rng = random.Random(seed)
    correct, labels, scores = [], [], []
    for prompt, base, steered in zip(cont.prompts, cont.base, cont.steered):
        first = rng.random() < 0.5  # which order is asked first does not matter: both are asked
        for steered_is_a in (first, not first):
            a, b = (steered, base) if steered_is_a else (base, steered)
            text = JUDGE_PROMPT.format(explanation=explanation, prompt=prompt, a=a.strip(), b=b.strip())
            ids = torch.tensor([judge_tok(text)["input_ids"]], device=device)
            logits = judge(input_ids=ids).logits[0, -1].float()
            p_a = float(torch.softmax(logits[[a_id, b_id]], 0)[0])
            p_steered = p_a if steered_is_a else 1 - p_a
            correct.append(p_steered > 0.5)
            labels += [1, 0]
            scores += [p_steered, 1 - p_steered]
    auroc = roc_auc_score(labels, scores) if len(set(scores)) > 1 else 0.5
    return sum(correct) / len(correct), float(auroc)


def intervention_score(judge, judge_tok, subject_tok, explanation: str, cont: Continuations) -> InterventionScore:
    accuracy, auroc = judge_scores(judge, judge_tok, explanation, cont)
    percentile, names = named_token_percentile(subject_tok, explanation, cont.logprob_change)
    return InterventionScore(accuracy, auroc, percentile, names)


def mean_of(scores: Sequence[InterventionScore]) -> dict[str, float]:
    """Means over explanations (named-token percentile over those that name a token)."""
    out = {}
    for name in ("judge_accuracy", "judge_auroc", "named_token_percentile"):
        values = [getattr(s, name) for s in scores if getattr(s, name) == getattr(s, name)]
        out[name] = sum(values) / len(values) if values else float("nan")
    return out


def feature_group(store_meta: dict, feature):
    """The one-feature `FeatureGroup` of a stored feature (encoder / basis file from the store's meta)."""
    from neuroscribe.features import FeatureGroup

    path = next(
        (
            g.get("encoder_path")
            for g in store_meta.get("groups", [])
            if (g["kind"], g["layer"]) == (feature.kind, feature.layer)
        ),
        None,
    )
    return FeatureGroup(feature.kind, feature.layer, (feature.index,), (feature.polarity,), encoder_path=path)


class InterventionScorer:
    """Scores explanations of a store's features by intervention (module doc). The subject is the store's
    model; the judge is the subject itself unless another local model is named. A feature's
    continuations are computed once, whatever the number of explanations of it."""

    def __init__(self, store, judge: str = "subject", steer: float = 4.0, dtype: str = "float32"):
        from neuroscribe.models import load_shared

        self.store, self.steer = store, steer
        subject = store.meta["model"]
        self.model, self.tok = load_shared(subject, dtype)
        self.judge, self.judge_tok = (
            (self.model, self.tok) if judge in ("subject", subject) else load_shared(judge, dtype)
        )
        self.judge_spec = subject if judge == "subject" else judge
        self._continuations: dict[str, Continuations] = {}

    def continuations_of(self, record) -> Continuations:
        from neuroscribe.output_side import feature_writer

        key = record.feature.key
        if key not in self._continuations:
            writer = feature_writer(self.model, feature_group(self.store.meta, record.feature))
            amount = steer_amount(self.steer, record.stats.max_activation)
            self._continuations[key] = continuations(self.model, self.tok, writer, 0, amount)
        return self._continuations[key]

    def score(self, record, explanation: str) -> InterventionScore:
        """The explanation's intervention scores; undefined (nan) for a planted feature: it has no direction."""
        if record.feature.kind == "planted":
            return InterventionScore(float("nan"), float("nan"), float("nan"), ())
        return intervention_score(self.judge, self.judge_tok, self.tok, explanation, self.continuations_of(record))
