"""collect's output-side table (`--output-side`): per feature, the token texts of its logit lens and
token change (`neuroscribe.output_side`), in the subject's own token pieces."""

from __future__ import annotations

from collections.abc import Sequence

from neuroscribe.output_side import feature_writer, logit_lens, steer_amount, token_change
from neuroscribe.records import FeatureId, OutputSide

from .finalize import TokenText


def describe_outputs(
    model, tok, groups: Sequence, max_activation: dict[str, float], k: int, steer: float
) -> dict[FeatureId, OutputSide]:
    """OutputSide of every feature of `groups`; a feature is amplified by `steer` x its max activation
    (a dead feature, max 0, by `steer` units)."""
    text = TokenText(tok)
    out = {}
    for group in groups:
        writer = feature_writer(model, group)
        features = group.feature_ids()
        amounts = [steer_amount(steer, max_activation.get(f.key, 0.0)) for f in features]
        promoted, suppressed = logit_lens(model, writer, k)
        raised, lowered = token_change(model, tok, writer, amounts, k)
        for i, fid in enumerate(features):
            lists = (promoted, suppressed, raised, lowered)
            out[fid] = OutputSide(*(tuple(token_label(text, t) for t in x[i].tolist()) for x in lists))
    return out


def token_label(text: TokenText, token_id: int) -> str:
    """A token's text on its own: its piece, or for a lone byte of a multi-byte character (which decodes
    to U+FFFD) the tokenizer's name for it (e.g. <0xE2>)."""
    piece = text.piece(token_id)
    return text.tok.convert_ids_to_tokens(token_id) if "\ufffd" in piece else piece
