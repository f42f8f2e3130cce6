"""Recipe parsing: one YAML + CLI overrides -> (script args, TRL config, model config), typos rejected.

Every key of a recipe is a field of a real dataclass: `ExplainerArguments` (ours, the one place for
options TRL lacks), TRL's `SFTConfig` / `DPOConfig` (which extend transformers' TrainingArguments)
and TRL's `ModelConfig`. Parsing uses `TrlParser(...).parse_args_and_config(fail_with_unknown_args=True)`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

from neuroscribe.configs import TRAIN_KINDS as KINDS  # noqa: E402

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
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace a finished run in output_dir (without it, a finished run is never trained over)."},
    )
    lora_layers: str | None = field(
        default=None,
        metadata={"help": "LoRA on these decoder layers only: 'last:N' or a comma list of indices (default: all)."},
    )


def peft_config(model_args: ModelConfig, script_args: ExplainerArguments, model_dir: str):
    """TRL's LoRA config from the recipe, restricted to `script_args.lora_layers` (None without --use_peft)."""
    from transformers import AutoConfig
    from trl import get_peft_config

    cfg = get_peft_config(model_args)
    spec = script_args.lora_layers
    if cfg is None or not spec:
        return cfg
    n_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    if spec.startswith("last:"):
        layers = list(range(max(0, n_layers - int(spec[5:])), n_layers))
    else:
        layers = [int(x) for x in spec.split(",")]
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise ValueError(f"lora_layers: {spec!r} names layers outside 0..{n_layers - 1}")
    cfg.layers_to_transform = layers
    return cfg


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
        config, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
    if config:
        check_recipe_types(config, kind)
    parser = make_parser(kind)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv, fail_with_unknown_args=True)
    except ValueError as err:
        if "Unknown arguments" in str(err):
            raise ValueError(f"{config or 'command line'}: {err}") from None
        raise
    move_secrets_to_env(training_args)
    secret = secret_options(parser)
    sys.argv[1:] = redact_argv(sys.argv[1:], secret)  # loggers (wandb) record argv: never with a token in it
    return script_args, training_args, model_args, RecipeSource(config, redact_argv(rest, secret))


def _accepts(hint, value) -> bool:
    """Whether `value` fits the field type `hint` (the scalar and container cases recipes use)."""
    import enum
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, set) or hint in (list, tuple):
        return isinstance(value, (list, tuple, str))  # one string is one item (e.g. lora_target_modules)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, (hint, str))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type we do not model: leave it to the library


def read_recipe(path: str | Path) -> dict:
    """A recipe's YAML as a mapping; one error naming the file when it is not UTF-8, not YAML or not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values, got {type(data).__name__}")
    return data


def check_recipe_types(path: str | Path, kind: str) -> None:
    """Refuse a recipe value of the wrong type. YAML values bypass argparse's conversion, so a list given
    for `learning_rate` would otherwise be accepted and crash deep in the optimizer."""
    import dataclasses
    import typing

    data = read_recipe(path)
    for cls in (ExplainerArguments, config_class(kind), ModelConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in data and f.name in hints and not _accepts(hints[f.name], data[f.name]):
                want = getattr(hints[f.name], "__name__", str(hints[f.name]))
                raise ValueError(
                    f"{path}: field {f.name} must be {want}, got {type(data[f.name]).__name__} {data[f.name]!r}"
                )


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


def secret_options(parser) -> dict[str, bool]:
    """Every option string of the parser (--hub_token, --hub-token, ...) -> whether its field holds a secret."""
    return {o: bool(_SECRET_KEY.search(a.dest)) for a in parser._actions for o in a.option_strings}


def _is_secret_option(name: str, options: Mapping[str, bool]) -> bool:
    """Whether argparse may read `name` as a secret option. It accepts any unambiguous prefix (`--hub_tok`
    is `--hub_token`), so a prefix counts as every option it could stand for; an exact name as itself."""
    if not name.startswith("--") or len(name) < 3:
        return False
    if name in options:
        return options[name]
    return bool(_SECRET_KEY.search(name)) or any(secret for o, secret in options.items() if o.startswith(name))


def redact_argv(argv, options: Mapping[str, bool] | None = None) -> tuple[str, ...]:
    """argv with the value of every secret option hidden (`options`: the parser's, see `secret_options`)."""
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = a.partition("=")
        if _is_secret_option(name, options or {}):
            if eq:
                a = name + "=" + REDACTED
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
