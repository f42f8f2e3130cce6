"""The fine-tuned per-token activation simulator (Transluce-style): inference and loading.

Format, labels and alignment: `neuroscribe.simulators.finetuned_format`. The forward is
`LocalSimulator`'s prefix-shared batched path, read at every text token's OWN position through the 11
class ids instead of the ten digit ids; the prediction is the expected class (0..10 scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuroscribe.models import dtype_name, load_model
from neuroscribe.records import Exemplar, SimulatedExemplar
from neuroscribe.runs.simulator import SIMULATOR_FILE, read_simulator_file
from neuroscribe.simulators.allatonce import LocalSimulator
from neuroscribe.simulators.base import simulated
from neuroscribe.simulators.finetuned_format import (
    N_CLASSES,
    EncodedText,
    SimulatorFormat,
    encode_text,
    expected_classes,
    prefix_ids,
    subject_predictions,
)


class FinetunedSimulator(LocalSimulator):
    """The trained simulator: `LocalSimulator`'s prefix-shared batched forward (or mode="full"), read
    at every text token's own position through the 11 class ids instead of the ten digit ids."""

    def __init__(
        self, model, tokenizer, fmt: SimulatorFormat, batch_size: int = 8, spec: str = "", mode: str = "shared_prefix"
    ):
        super().__init__(model, tokenizer, batch_size=batch_size, spec=spec or "finetuned", mode=mode)
        self.format = fmt
        self.digit_ids = list(fmt.class_token_ids)  # the head rows the inherited read-out uses

    @property
    def trained_features(self) -> tuple[str, ...]:
        """Features whose exemplars this simulator was trained on: it never scores them unmarked."""
        return self.format.trained_features

    def class_logits(self, explanation: str, encoded: Sequence[EncodedText]) -> list[torch.Tensor]:
        """[n_simulator_tokens, 11] logits per encoded text (empty texts give an empty tensor)."""
        todo = [i for i, e in enumerate(encoded) if e.ids]
        out = [torch.zeros((0, N_CLASSES)) for _ in encoded]
        if not todo:
            return out
        bodies = [(list(encoded[i].ids), list(range(len(encoded[i].ids)))) for i in todo]
        for i, lg in zip(todo, self.digit_logits(prefix_ids(self.tokenizer, explanation), bodies)):
            out[i] = lg.float().cpu()
        return out

    def _simulate_many(self, explanations: list[str], exemplars: list[Exemplar]) -> list[list[SimulatedExemplar]]:
        """Every explanation's header in one batch, then all (header, exemplar) rows batched together."""
        encoded = [encode_text(self.tokenizer, e.tokens) for e in exemplars]
        todo = [i for i, e in enumerate(encoded) if e.ids]
        logits = [[torch.zeros((0, N_CLASSES)) for _ in encoded] for _ in explanations]
        if todo:
            bodies = [(list(encoded[i].ids), list(range(len(encoded[i].ids)))) for i in todo]
            prefixes = [prefix_ids(self.tokenizer, x) for x in explanations]
            for j, per_body in enumerate(self.digit_logits_many(prefixes, bodies)):
                for i, lg in zip(todo, per_body):
                    logits[j][i] = lg.float().cpu()
        return [
            [
                simulated(e, subject_predictions(enc, expected_classes(lg).tolist()))
                for e, enc, lg in zip(exemplars, encoded, per_explanation)
            ]
            for per_explanation in logits
        ]

    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        """Expected class (0..10) at every SUBJECT token of every exemplar, in input order."""
        encoded = [encode_text(self.tokenizer, e.tokens) for e in exemplars]
        logits = self.class_logits(explanation, encoded)
        return [
            simulated(e, subject_predictions(enc, expected_classes(lg).tolist()))
            for e, enc, lg in zip(exemplars, encoded, logits)
        ]


def load_finetuned_simulator(
    path: str, dtype: str = "float32", batch_size: int = 8, device: str = "cpu", mode: str = "shared_prefix"
) -> FinetunedSimulator:
    """Load a trained simulator folder (LoRA adapter merged into its base, or full weights).

    `path` may end in `#RUN_ID` to pin a run: loading fails if the folder now holds another one.
    The spec is `finetuned:PATH#RUN_ID` (+ `@DTYPE` unless float32, as for `hf:` specs), so cached
    scores are keyed by the trained weights' run and the precision; a spec loads back as a path.
    """

    folder, _, pinned = str(path).partition("#")
    pinned = pinned.partition("@")[0]
    fmt = read_simulator_file(folder)
    if pinned and pinned != fmt.run_id[: len(pinned)]:
        raise ValueError(f"{folder}/{SIMULATOR_FILE}: field run_id is {fmt.run_id!r}, not the pinned {pinned!r}")
    model, tok = load_model(folder, dtype=dtype, device=device)
    if hasattr(model, "merge_and_unload"):  # PEFT: fold the adapter in once, inference needs no LoRA matmuls
        model = model.merge_and_unload().eval()
    fmt.check_tokenizer(tok, folder)
    weights = dtype_name(dtype)
    spec = f"finetuned:{folder}#{fmt.run_id[:12]}" + ("" if weights == "float32" else f"@{weights}")
    return FinetunedSimulator(model, tok, fmt, batch_size=batch_size, mode=mode, spec=spec)
