"""Recipe parsing: one YAML + CLI overrides -> (script args, TRL config, model config), typos rejected.

Every key of a recipe is a field of a real dataclass: `ExplainerArguments` (ours, the one place for
options TRL lacks), TRL's `SFTConfig` / `DPOConfig` (which extend transformers' TrainingArguments)
and TRL's `ModelConfig`. Parsing uses `TrlParser(...).parse_args_and_config(fail_with_unknown_args=True)`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

KINDS = ("sft", "dpo", "simulator")
_SECRET_KEY = re.compile(r"(token|secret|api_key|password)", re.I)
REDACTED = "<redacted>"


@dataclass
class ExplainerArguments(ScriptArguments):
    """Options shared by every neuroscribe training entry point (open-r1 style: one mixin, not one per script).

    dataset_name may be a folder written by `neuroscribe distill build` (with dataset_config naming
    `sft`, `chat` or `preference`) or a Hub dataset id.
    """

    dataset_test_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    wandb_project: str | None = field(default=None, metadata={"help": "W&B project (sets WANDB_PROJECT)."})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B entity (sets WANDB_ENTITY)."})
    wandb_group: str | None = field(default=None, metadata={"help": "W&B run group (sets WANDB_RUN_GROUP)."})
    check_heldout: bool = field(
        default=True,
        metadata={"help": "Refuse to train when a row's feature is listed in the dataset's heldout.txt."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (smoke runs)."}
    )


def config_class(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown training kind {kind!r}; choose one of {list(KINDS)}")
    # The simulator trains with transformers' Trainer; SFTConfig is its TrainingArguments (it carries
    # max_length), and train/simulator.py refuses the SFT-only options it would ignore.
    return DPOConfig if kind == "dpo" else SFTConfig


def make_parser(kind: str) -> TrlParser:
    return TrlParser((ExplainerArguments, config_class(kind), ModelConfig), prog=f"neuroscribe.train.{kind}")


def recipe_kind(path: str | Path) -> str:
    """'simulator' for recipes under a `simulator/` or `*-simulator/` folder or named `*simulator*`,
    'dpo' for recipes under a `dpo/` folder or named `*dpo*`, else 'sft'."""
    p = Path(path)
    if any(part == "simulator" or part.endswith("-simulator") for part in p.parts[:-1]) or "simulator" in p.stem:
        return "simulator"
    return "dpo" if "dpo" in p.parts or "dpo" in p.stem else "sft"


@dataclass(frozen=True)
class RecipeSource:
    """Where a run's settings came from, kept for the run folder and the model card (secrets redacted)."""

    path: str | None
    overrides: tuple[str, ...]


def parse_args(kind: str, argv: Sequence[str] | None = None):
    """Parse `--config FILE` plus CLI overrides; unknown keys (file or CLI) raise with the file named."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config, rest = None, argv
    if "--config" in argv:
        i = argv.index("--config")
        config, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    parser = make_parser(kind)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv, fail_with_unknown_args=True)
    except ValueError as err:
        if "Unknown arguments" in str(err):
            raise ValueError(f"{config or 'command line'}: {err}") from None
        raise
    move_secrets_to_env(training_args)
    return script_args, training_args, model_args, RecipeSource(config, redact_argv(rest))


def parse_recipe(path: str | Path, kind: str | None = None, overrides: Sequence[str] = ()):
    """Parse a recipe for inspection (lint, `plan`) on any machine.

    TRL configs refuse bf16 without a bf16-capable accelerator; a machine without one parses with
    `--use_cpu true` appended, which changes no other field.
    """
    import torch

    kind = kind or recipe_kind(path)
    extra = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return parse_args(kind, ["--config", str(path), *overrides, *extra])


def move_secrets_to_env(training_args) -> None:
    """A hub token given as an argument goes to HF_TOKEN and leaves the args, so it is never pickled
    into training_args.bin, logged or written to a card."""
    token = getattr(training_args, "hub_token", None)
    if token:
        os.environ["HF_TOKEN"] = token
        training_args.hub_token = None


def redact_argv(argv) -> tuple[str, ...]:
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if a.startswith("--") and _SECRET_KEY.search(a):
            if "=" in a:
                a = a.split("=", 1)[0] + "=" + REDACTED
            else:
                hide_next = True
        out.append(a)
    return tuple(out)


def redacted_recipe_text(path: str | Path) -> str:
    """The recipe YAML with secret-looking keys (hub_token, env: HF_TOKEN ...) removed."""

    def scrub(obj):
        if isinstance(obj, dict):
            return {k: (REDACTED if _SECRET_KEY.search(str(k)) else scrub(v)) for k, v in obj.items()}
        return obj

    text = Path(path).read_text()
    data = yaml.safe_load(text)
    if scrub(data) == data:
        return text  # keep the author's comments when there is nothing to hide
    return yaml.safe_dump(scrub(data), sort_keys=False)
