"""The command-line generator (`neuroscribe.options`): Literal fields become choice options whose values
reach the config as plain strings, and two fields that flatten into one option are refused at build time."""

from __future__ import annotations

import enum
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest
import typer
from typer.testing import CliRunner

from neuroscribe import configs
from neuroscribe.cli import app as neuroscribe_app
from neuroscribe.configs import CollectConfig, DemoConfig, EvalConfig, ExplainConfig, ScoreConfig
from neuroscribe.options import OptionCollision, choice_fields, command, to_dict

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    """A nested config."""

    mode: Literal["fast", "slow"] = "fast"
    """How to go."""

    def __post_init__(self) -> None:
        configs.one_of(self)


@dataclass(frozen=True)
class Toy:
    """A config with every kind of choice field."""

    out: str
    """Output folder."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """A short choice list."""
    style: Literal["plain", "highlighted", "contrastive", "input+output"] | None = None
    """A long, optional choice list."""
    rows: tuple[Literal["a", "b"], ...] = ()
    """Repeatable choices."""
    splits: tuple[Literal["x", "y", "z"], ...] = field(default=("x", "y"), metadata={"sep": ","})
    """Comma-separated choices."""
    colour: Colour = Colour.RED
    """An Enum field."""
    inner: Inner = field(default_factory=Inner)
    """Nested."""

    def __post_init__(self) -> None:
        configs.one_of(self)


def toy_app() -> tuple[typer.Typer, list]:
    app, seen = typer.Typer(add_completion=False), []
    command(app, Toy, seen.append, name="toy")
    command(app, Inner, seen.append, name="unused")  # two commands, so `toy` stays a subcommand
    return app, seen


# --------------------------------------------------------------------------- choices on the command line


def test_a_literal_option_lists_its_choices_in_help():
    app, _ = toy_app()
    res = invoke(app, "toy", "--help")
    assert res.exit_code == 0, res.output
    assert "<float32|bfloat16>" in res.output  # short: in the metavar column
    assert "Choices: plain, highlighted, contrastive, input+output." in " ".join(res.output.split())  # long: in help
    assert "<a|b>" in res.output
    assert "Choices: x, y, z." in res.output  # a separated list's items
    assert "<fast|slow>" in res.output


def test_a_good_choice_reaches_the_config_as_a_plain_string():
    app, seen = toy_app()
    args = ("--out", "o", "--dtype", "bfloat16", "--style", "input+output", "--rows", "b", "--rows", "a")
    res = invoke(app, "toy", *args, "--splits", "z,x", "--mode", "slow", "--colour", "blue")
    assert res.exit_code == 0, res.output
    (cfg,) = seen
    assert cfg.dtype == "bfloat16" and type(cfg.dtype) is str
    assert cfg.style == "input+output" and type(cfg.style) is str
    assert cfg.rows == ("b", "a") and all(type(r) is str for r in cfg.rows)
    assert cfg.splits == ("z", "x") and cfg.inner.mode == "slow" and type(cfg.inner.mode) is str
    assert cfg.colour is Colour.BLUE
    saved = to_dict(cfg)
    assert json.loads(json.dumps(saved)) == saved and saved["colour"] == "blue" and saved["style"] == "input+output"


def test_defaults_stay_as_declared():
    app, seen = toy_app()
    assert invoke(app, "toy", "--out", "o").exit_code == 0
    assert seen == [Toy(out="o")] and seen[0].style is None


@pytest.mark.parametrize(
    "args, option, choice",
    [
        (("--dtype", "float64"), "--dtype", "'bfloat16'"),
        (("--style", "fancy"), "--style", "'contrastive'"),
        (("--rows", "a", "--rows", "c"), "--rows", "'b'"),
        (("--splits", "x,w"), "--splits", "'z'"),
        (("--mode", "medium"), "--mode", "'slow'"),
    ],
)
def test_a_bad_choice_is_refused_naming_the_option_and_its_choices(args, option, choice):
    app, seen = toy_app()
    res = invoke(app, "toy", "--out", "o", *args)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}'" in res.output and choice in res.output, res.output
    assert "Traceback" not in res.output and not seen


def test_the_real_commands_offer_their_choices(tmp_path):
    collect = invoke(neuroscribe_app, "collect", "--help").output
    assert "<auto|both|positive>" in collect and "Choices: float32, bfloat16, float16" in collect
    explain = " ".join(invoke(neuroscribe_app, "explain", "--help").output.split())
    assert "Choices: plain, highlighted, contrastive, output, input+output, graded." in explain
    assert "<relu|raw>" in explain
    assert "<suite|paraphrases>" in invoke(neuroscribe_app, "demo", "--help").output
    out = tmp_path / "store"
    res = invoke(neuroscribe_app, "collect", "--out", str(out), "--polarity", "sideways")
    assert res.exit_code == 2 and "Invalid value for '--polarity'" in res.output and "'positive'" in res.output
    res = invoke(neuroscribe_app, "explain", "--store", "s", "--out", str(out), "--prompt", "fancy")
    assert res.exit_code == 2 and "Invalid value for '--prompt'" in res.output and "'graded'" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "cls, args, kwargs",
    [
        (
            CollectConfig,
            ("--out", "o", "--dtype", "bfloat16", "--polarity", "positive"),
            dict(out="o", dtype="bfloat16", polarity="positive"),
        ),
        (
            ExplainConfig,
            ("--store", "s", "--out", "o", "--prompt", "graded", "--target", "raw"),
            dict(store="s", out="o", prompt_style="graded", target="raw"),
        ),
        (
            DemoConfig,
            ("--simulator-phrasings", "paraphrases", "--primary", "teacher_vs_null"),
            dict(simulator_phrasings="paraphrases", primary="teacher_vs_null"),
        ),
    ],
)
def test_a_real_config_from_the_command_line_equals_the_one_from_python(cls, args, kwargs):
    app, seen = typer.Typer(add_completion=False), []
    command(app, cls, seen.append, name="run", rename={"prompt_style": "prompt"})
    command(app, Inner, seen.append, name="other")
    res = invoke(app, "run", *args)
    assert res.exit_code == 0, res.output
    (cfg,) = seen
    assert cfg == cls(**kwargs) and json.dumps(to_dict(cfg)) == json.dumps(to_dict(cls(**kwargs)))
    assert all(type(getattr(cfg, name)) is str for name in choice_fields(cls) if getattr(cfg, name) is not None)


# --------------------------------------------------------------------------- the Python API


def test_the_python_api_refuses_a_value_outside_the_choices():
    with pytest.raises(ValueError, match=r"--dtype 'float64': choose one of \['float32', 'bfloat16'"):
        CollectConfig(out="o", dtype="float64")
    with pytest.raises(ValueError, match="--polarity 'sideways'"):
        CollectConfig(out="o", polarity="sideways")
    with pytest.raises(ValueError, match="--prompt-style 'fancy'"):
        ExplainConfig(store="s", out="o", prompt_style="fancy")
    with pytest.raises(ValueError, match="--target 'abs'"):
        ScoreConfig(explanations="e", store="s", out="o", target="abs")
    with pytest.raises(ValueError, match="--primary 'gain'"):  # as eval_command said it before
        EvalConfig(store="s", features="f", student="m", out="o", teacher="t", primary="gain")
    with pytest.raises(ValueError, match="--simulator-phrasings 'both'"):
        DemoConfig(simulator_phrasings="both")
    with pytest.raises(ValueError, match="--rows 'c'"):
        Toy(out="o", rows=("a", "c"))
    assert ExplainConfig(store="s", out="o").prompt_style is None  # None passes where the type allows it
    with pytest.raises(ValueError, match="--mode None"):
        Inner(mode=None)  # type: ignore[arg-type]  # ... and only there
    assert CollectConfig(out="o", dtype="bf16").dtype == "bf16"  # the aliases models.parse_dtype reads


def test_every_choice_fields_default_is_one_of_its_choices():
    for cls in [getattr(configs, n) for n in dir(configs) if n.endswith("Config")]:
        for f in fields(cls):
            if f.name in choice_fields(cls) and f.default is not None:
                assert f.default in choice_fields(cls)[f.name][0], (cls.__name__, f.name)


def test_the_choices_match_what_the_code_reading_them_accepts():
    from neuroscribe.eval.results import COMPARISONS
    from neuroscribe.models import DTYPES
    from neuroscribe.prompts import STYLES
    from neuroscribe.scorers import TARGETS

    assert set(typing.get_args(configs.Dtype)) == set(DTYPES)
    assert set(typing.get_args(configs.PromptStyle)) == set(STYLES)
    assert set(typing.get_args(configs.Target)) == set(TARGETS)
    assert set(typing.get_args(configs.Comparison)) == {name for name, *_ in COMPARISONS}
    assert choice_fields(DemoConfig)["dtype"][0] == ("auto", *typing.get_args(configs.Dtype))


# --------------------------------------------------------------------------- name collisions


@dataclass(frozen=True)
class Limits:
    """A nested config whose field clashes with its parent's."""

    seed: int = 0
    """Seed of the limits."""


@dataclass(frozen=True)
class Clashing:
    """Two fields that flatten into --seed."""

    seed: int = 0
    """Seed of the run."""
    limits: Limits = field(default_factory=Limits)
    """Nested."""


@dataclass(frozen=True)
class FlagClash:
    """A bool's --no- flag against another field."""

    cache: bool = True
    """Use the cache."""
    no_cache: str | None = None
    """A field that would be --no-cache too."""


def test_two_fields_flattening_into_one_option_are_refused_when_the_command_is_built():
    with pytest.raises(OptionCollision, match=r"Clashing: fields seed and limits\.seed both become the option --seed"):
        command(typer.Typer(), Clashing, print)
    with pytest.raises(OptionCollision, match="cache and no_cache both become the option --no-cache"):
        command(typer.Typer(), FlagClash, print)
    with pytest.raises(OptionCollision, match="seed and limits.seed both become the option --x"):  # renamed alike
        command(typer.Typer(), Clashing, print, rename={"limits.seed": "x", "seed": "x"})


def test_a_dotted_rename_settles_a_collision():
    app, seen = typer.Typer(add_completion=False), []
    command(app, Clashing, seen.append, name="run", rename={"limits.seed": "limits_seed"})
    command(app, Limits, seen.append, name="other")
    res = invoke(app, "run", "--seed", "1", "--limits-seed", "2")
    assert res.exit_code == 0, res.output
    assert seen == [Clashing(seed=1, limits=Limits(seed=2))]


def test_no_stage_config_has_a_collision():
    for cls in [getattr(configs, n) for n in dir(configs) if n.endswith("Config")]:
        command(typer.Typer(), cls, print)  # raises OptionCollision on a clash (neuroscribe.cli builds them all)
