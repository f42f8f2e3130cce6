"""Training pieces of the fine-tuned simulator: the batch collator and the class cross-entropy.

The text format, labels and alignment live in `neuroscribe.simulators.finetuned_format`; this module
only turns rows into tensors and logits into a loss, so inference never imports training code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuroscribe.simulators.finetuned_format import IGNORE, N_CLASSES, training_example


class SimulatorCollator:
    """Rows with `explanation`, `tokens`, `classes` -> right-padded input_ids / attention_mask / labels."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        pairs = [
            training_example(self.tokenizer, r["explanation"], r["tokens"], r["classes"], self.max_length) for r in rows
        ]
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(pairs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ClassCrossEntropy:
    """Trainer `compute_loss_func`: cross-entropy over the 11 class logits at labelled positions.

    Summed and divided by the labelled-token count of the whole accumulated batch (the Trainer's
    `num_items_in_batch`), so gradient accumulation gives the same loss as one big batch.
    """

    def __init__(self, class_ids: Sequence[int]):
        self.class_ids = list(class_ids)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"][..., self.class_ids].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, N_CLASSES), labels.reshape(-1).to(logits.device), ignore_index=IGNORE, reduction="sum"
        )
        n = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE).sum()
        return loss / torch.as_tensor(n, device=loss.device).clamp(min=1)
