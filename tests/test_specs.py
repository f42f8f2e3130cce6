"""`neuroscribe.specs`: one Spec type for backend and simulator spec strings, parsed once."""

from __future__ import annotations

import pytest

from neuroscribe.backends import load_backend
from neuroscribe.simulators import SPECS, load_simulator
from neuroscribe.specs import BACKEND_KINDS, SIMULATOR_KINDS, Spec, split_spec


@pytest.mark.parametrize(
    "text",
    [
        "hf:smollm2-135m-instruct",
        "openai:gpt-4o-mini",
        "openai:smollm2@http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1",
        "openai:ft:gpt-4o-mini:org::abc",
        "anthropic:claude-3-5-haiku-latest",
        "vllm:/models/llama",
        "patterns:v1",
    ],
)
def test_a_canonical_backend_spec_round_trips(text):
    spec = Spec.parse(text, BACKEND_KINDS)
    assert str(spec) == text
    assert Spec.parse(str(spec), BACKEND_KINDS) == spec


def test_parsing_normalises_case_and_spaces():
    spec = Spec.parse(" OpenAI : m@http://a/v1, https://b/v1 ")
    assert spec == Spec("openai", "m", ("http://a/v1", "https://b/v1"))
    assert str(spec) == "openai:m@http://a/v1,https://b/v1"
    assert Spec.parse("hf:user/model@main").model == "user/model@main"  # only openai: takes URLs


def test_simulator_specs_wrap_a_backend_spec():
    spec = Spec.parse("parsed:openai:m@http://a/v1, http://b/v1", SIMULATOR_KINDS)
    assert spec == Spec("parsed", "openai:m@http://a/v1,http://b/v1")
    assert spec.wrapped() == Spec("openai", "m", ("http://a/v1", "http://b/v1"))
    assert Spec.parse(str(spec), SIMULATOR_KINDS) == spec
    assert Spec.parse("finetuned:/runs/sim#abc123", SIMULATOR_KINDS) == Spec("finetuned", "/runs/sim#abc123")
    assert tuple(SPECS) == SIMULATOR_KINDS.names  # every kind the grammar accepts has a factory


@pytest.mark.parametrize("bad", ["", "smollm2", "gpt:x", "hf:", "openai:m@", "openai:m@ftp://host", "finetuned:x"])
def test_a_bad_backend_spec_names_itself_and_the_accepted_forms(bad):
    with pytest.raises(ValueError) as err:
        Spec.parse(bad, BACKEND_KINDS)
    message = str(err.value)
    assert message.startswith(f"backend spec {bad!r}: ")
    assert "e.g. hf:smollm2-135m-instruct" in message


@pytest.mark.parametrize("bad", ["", "patterns:v1", "parsed:", "parsed:gpt:x", "openai:m@ftp://host", "vllm:"])
def test_a_bad_simulator_spec_names_itself_and_the_accepted_forms(bad):
    with pytest.raises(ValueError) as err:
        load_simulator(bad)
    message = str(err.value)
    assert message.startswith(f"simulator spec {bad!r}: ")
    assert "finetuned:PATH" in message or "KIND:MODEL" in message  # the wrapped backend spec's forms


def test_a_spec_of_another_family_is_refused_by_the_loaders():
    with pytest.raises(ValueError, match="backend spec 'finetuned:x'"):
        load_backend(Spec("finetuned", "x"))
    with pytest.raises(ValueError, match="simulator spec 'anthropic:m'"):
        load_simulator(Spec("anthropic", "m"))


def test_split_spec_checks_nothing():
    assert split_spec(" HF : x ") == ("hf", "x")
    assert split_spec("no-colon") == ("", "")
    assert split_spec("C:/models/x") == ("c", "/models/x")
