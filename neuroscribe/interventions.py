"""Scoring an explanation by intervention: does it predict what amplifying the feature does?

The subject continues `output_side.NEUTRAL_PROMPTS` greedily, as is and with the feature amplified
(`steer` x its max activation at its own site, every position, `output_side.Writer`). Scores:
- **contrastive** (the published design's reading: given an explanation, which feature's steering
  produced this text?): the judge reads the explanation and, per prompt, the steered continuations of
  the feature and of `K` other features of the store (all steered, so broken fluency is no cue), as
  A, B, C, ...; each prompt is asked K+1 times, the right one at each position once, and P(option)
  is read from the logits of " A", " B", .... `contrastive_accuracy` is the share of items where the
  right option is the most probable (a tie shares the credit). Chance: 1 / (K+1) (`contrastive_chance`).
- **judge** (steered vs unsteered, kept beside it; chance 0.5): the two continuations of a prompt as A
  and B, each pair in both orders; which was written with the feature amplified? `judge_accuracy` is
  the share of items where the steered one gets more than half, `judge_auroc` the AUROC of that
  probability over all continuations (label: steered). A judge can win this from fluency alone.
- **named tokens**: tokens the explanation names (every quoted string, and every unquoted word of 3+
  letters that is not a function word or a word explanations use about any feature, `_STOP`; first
  token of each, with and without a leading space) and how far amplifying the feature raises them: the
  percentile of their mean log-probability change (`output_side.mean_logprob_change`) among the whole
  vocabulary's (1 = raised more than any other token; chance 0.5).
Every score is also reported minus the null explanation's (`*_vs_null`: the empty explanation scored
the same way on the same feature), which removes the judge's own bias. The null names no token, so the
named-token percentile is taken against its chance, 0.5.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from sklearn.metrics import roc_auc_score

from neuroscribe.features import FeatureGroup
from neuroscribe.models import load_shared
from neuroscribe.output_side import (
    NEUTRAL_PROMPTS,
    Writer,
    added_to_output,
    feature_writer,
    mean_logprob_change,
    mean_logprobs,
    prompt_batch,
    steer_amount,
)
from neuroscribe.runs.store import META as STORE_META

JUDGE_PROMPT = (
    "A neuron of a language model is described as: {explanation}\n\n"
    "The model continued the same text twice; one of the two continuations was written while this "
    "neuron was strongly amplified.\n\nText: {prompt}\nA: {a}\nB: {b}\n\n"
    "Which continuation was written with the neuron amplified? Answer A or B.\nAnswer:"
)
CONTRASTIVE_PROMPT = (
    "A neuron of a language model is described as: {explanation}\n\n"
    "The model continued the same text several times, each time with a different neuron strongly "
    "amplified.\n\nText: {prompt}\n{options}\n\n"
    "Which continuation was written with the described neuron amplified? Answer with its letter.\nAnswer:"
)
LETTERS = "ABCDEFGHIJ"
DISTRACTORS = 3  # K other features per contrastive item: chance 1/4
NULL_EXPLANATION = ""  # the empty explanation (as eval's null baseline)
_EXTRA_STOP = (  # words explanations use about any feature, and position words sklearn's list lacks
    "word words token tokens text texts phrase phrases unit neuron feature features fires firing active "
    "activates activation activations right left after before following preceding next previous end start "
    "beginning middle context contexts mention mentions related especially usually often various specific "
    "certain common typically like such"
)


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # function words ("after", "the", ...)

    return frozenset(ENGLISH_STOP_WORDS) | frozenset(_EXTRA_STOP.split())


_STOP = _stop_words()


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
    contrastive_accuracy: float = math.nan  # nan without another feature to contrast with
    contrastive_chance: float = math.nan  # 1 / (K+1)
    judge_accuracy_vs_null: float = math.nan
    judge_auroc_vs_null: float = math.nan
    named_token_percentile_vs_null: float = math.nan  # minus 0.5: the null names nothing
    contrastive_accuracy_vs_null: float = math.nan


SCORE_NAMES = (
    "contrastive_accuracy",
    "judge_accuracy",
    "judge_auroc",
    "named_token_percentile",
    "contrastive_accuracy_vs_null",
    "judge_accuracy_vs_null",
    "judge_auroc_vs_null",
    "named_token_percentile_vs_null",
)


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

    ids, mask = prompt_batch(tok, prompts, device)
    base = generate()
    with added_to_output(writer, delta):
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


Chooser = Callable[[str, str, Sequence[str]], Sequence[float]]
"""(explanation, prompt, options) -> a probability per option: the contrastive judge."""


def model_chooser(judge, judge_tok) -> Chooser:
    """A judge model as a Chooser: CONTRASTIVE_PROMPT, P(option) from the logits of " A", " B", ...."""
    device = next(judge.parameters()).device

    @torch.no_grad()
    def choose(explanation: str, prompt: str, options: Sequence[str]) -> list[float]:
        letters = LETTERS[: len(options)]
        ids = [judge_tok(f" {x}", add_special_tokens=False)["input_ids"][-1] for x in letters]
        shown = "\n".join(f"{x}: {o.strip()}" for x, o in zip(letters, options))
        text = CONTRASTIVE_PROMPT.format(explanation=explanation, prompt=prompt, options=shown)
        logits = judge(input_ids=torch.tensor([judge_tok(text)["input_ids"]], device=device)).logits[0, -1]
        return torch.softmax(logits.float()[ids], 0).tolist()

    return choose


def contrastive_accuracy(
    choose: Chooser, explanation: str, target: Continuations, others: Sequence[Continuations]
) -> float:
    """The contrastive score of the module doc: per prompt, the target feature's steered continuation
    among the others' steered ones, asked once with the right one at each position (nan without others)."""
    if not others or len(others) + 1 > len(LETTERS):
        return math.nan
    n = len(others) + 1
    credit = []
    for i, prompt in enumerate(target.prompts):
        texts = [target.steered[i], *(o.steered[i] for o in others)]
        for right in range(n):
            order = [*range(1, n)]
            order.insert(right, 0)  # option slot -> text index; the target's text sits at slot `right`
            probs = list(choose(explanation, prompt, [texts[j] for j in order]))
            best = max(probs)
            tied = [k for k, p in enumerate(probs) if p == best]
            credit.append(1.0 / len(tied) if right in tied else 0.0)
    return sum(credit) / len(credit)


def intervention_score(
    judge,
    judge_tok,
    subject_tok,
    explanation: str,
    cont: Continuations,
    others: Sequence[Continuations] = (),
    null: InterventionScore | None = None,
) -> InterventionScore:
    """Every score of the module doc; `null`: the null explanation's score of the same feature, for *_vs_null."""
    accuracy, auroc = judge_scores(judge, judge_tok, explanation, cont)
    percentile, names = named_token_percentile(subject_tok, explanation, cont.logprob_change)
    contrast = contrastive_accuracy(model_chooser(judge, judge_tok), explanation, cont, others)
    score = InterventionScore(
        accuracy, auroc, percentile, names, contrast, 1.0 / (len(others) + 1) if others else math.nan
    )
    return with_null(score, null) if null is not None else score


def with_null(score: InterventionScore, null: InterventionScore) -> InterventionScore:
    """`score` with its *_vs_null fields: each score minus the null explanation's (the percentile minus 0.5)."""
    return replace(
        score,
        judge_accuracy_vs_null=score.judge_accuracy - null.judge_accuracy,
        judge_auroc_vs_null=score.judge_auroc - null.judge_auroc,
        named_token_percentile_vs_null=score.named_token_percentile - 0.5,
        contrastive_accuracy_vs_null=score.contrastive_accuracy - null.contrastive_accuracy,
    )


def mean_of(scores: Sequence[InterventionScore]) -> dict[str, float]:
    """Means over explanations of every score (each over those where it is defined)."""
    out = {}
    for name in SCORE_NAMES:
        values = [getattr(s, name) for s in scores if getattr(s, name) == getattr(s, name)]
        out[name] = sum(values) / len(values) if values else float("nan")
    return out


def feature_group(store_meta: dict, feature):
    """The one-feature `FeatureGroup` of a stored feature (encoder / basis file from the store's meta)."""

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
    continuations, its contrastive distractors (`distractors` other subject features of the store, drawn
    by a seed of its key) and its null-explanation score are computed once, whatever the number of
    explanations of it."""

    def __init__(
        self, store, judge: str = "subject", steer: float = 4.0, dtype: str = "float32", distractors: int = DISTRACTORS
    ):
        self.store, self.steer, self.distractors = store, steer, distractors
        subject = store.subject_model
        if subject is None:
            raise ValueError(f"{store.path / STORE_META}: field model is missing; steering needs the subject model")
        self.model, self.tok = load_shared(subject, dtype)
        self.judge, self.judge_tok = (
            (self.model, self.tok) if judge in ("subject", subject) else load_shared(judge, dtype)
        )
        self.judge_spec = subject if judge == "subject" else judge
        self._continuations: dict[str, Continuations] = {}
        self._nulls: dict[str, InterventionScore] = {}

    def continuations_of(self, record) -> Continuations:
        key = record.feature.key
        if key not in self._continuations:
            writer = feature_writer(self.model, feature_group(self.store.meta, record.feature))
            amount = steer_amount(self.steer, record.stats.max_activation)
            self._continuations[key] = continuations(self.model, self.tok, writer, 0, amount)
        return self._continuations[key]

    def others_of(self, record) -> list[Continuations]:
        """The steered continuations of `distractors` other subject features (same draw for every explanation)."""
        pool = sorted(
            k for k in self.store.keys(include_dead=False) if k != record.feature.key and not k.startswith("planted/")
        )
        picked = random.Random(record.feature.key).sample(pool, min(self.distractors, len(pool)))
        return [self.continuations_of(self.store.get(k)) for k in picked]

    def score(self, record, explanation: str) -> InterventionScore:
        """The explanation's intervention scores; undefined (nan) for a planted feature: it has no direction."""
        if record.feature.kind == "planted":
            return InterventionScore(float("nan"), float("nan"), float("nan"), ())
        cont, others = self.continuations_of(record), self.others_of(record)
        key = record.feature.key
        if key not in self._nulls:
            self._nulls[key] = intervention_score(self.judge, self.judge_tok, self.tok, NULL_EXPLANATION, cont, others)
        return intervention_score(self.judge, self.judge_tok, self.tok, explanation, cont, others, self._nulls[key])
