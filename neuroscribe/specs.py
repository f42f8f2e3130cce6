"""Spec strings (`KIND:MODEL[@URL,URL...]`) parsed once into a `Spec`, for backends and simulators alike.

A family (`SpecKinds`) says which kinds a spec may name and how an error lists the accepted forms:
`BACKEND_KINDS` for `backends.load_backend`, `SIMULATOR_KINDS` for `simulators.load_simulator`. In both,
only `openai:` takes base URLs after the last '@' (model names may hold ':' and '@'), and a simulator's
`parsed:` wraps a whole backend spec (`parsed:openai:MODEL@URL`). `str(spec)` is the canonical string,
and parsing it gives the same Spec back.
"""

from __future__ import annotations

from dataclasses import dataclass

URL_EXAMPLE = "http://127.0.0.1:8000/v1"


@dataclass(frozen=True)
class SpecKinds:
    """One family of spec strings: its name in errors, the kinds it accepts, the forms an error lists."""

    noun: str  # "backend spec 'x': ..."
    names: tuple[str, ...]
    expected: str  # what an error says a spec of this family looks like
    examples: str = ""  # shown in parentheses after every error when given
    wraps: str = ""  # the kind whose model is itself a backend spec (the simulators' parsed:)

    def error(self, text: str, problem: str | None = None) -> ValueError:
        """The one error a bad spec gets: what is wrong with it (by default, its form), and the forms accepted."""
        if problem is None:
            message = f"expected {self.expected}" + (f" ({self.examples})" if self.examples else "")
        else:
            message = f"{problem} ({self.examples or f'expected {self.expected}'})"
        return ValueError(f"{self.noun} spec {text!r}: {message}")


_BACKEND_NAMES = ("hf", "openai", "anthropic", "vllm", "patterns")
BACKEND_KINDS = SpecKinds(
    "backend",
    _BACKEND_NAMES,
    f"KIND:MODEL with KIND one of {', '.join(_BACKEND_NAMES)}",
    "e.g. hf:smollm2-135m-instruct, openai:gpt-4o-mini, openai:MODEL@http://127.0.0.1:8000/v1, "
    "anthropic:MODEL, vllm:MODEL, patterns:v1",
)
SIMULATOR_KINDS = SpecKinds(
    "simulator",
    ("hf", "finetuned", "openai", "parsed", "vllm"),
    "hf:MODEL, vllm:MODEL, finetuned:PATH, openai:MODEL@URL or parsed:openai:MODEL@URL",
    wraps="parsed",
)


def split_spec(text: str) -> tuple[str, str]:
    """(kind, rest) of `KIND:REST`, the kind lower-cased and both stripped; ("", "") without a ':'.
    It checks nothing: `Spec.parse` does."""
    kind, sep, rest = text.partition(":")
    return (kind.strip().lower(), rest.strip()) if sep else ("", "")


@dataclass(frozen=True)
class Spec:
    """What a spec string names: a kind, a model (a name, folder or path; for `parsed:` the wrapped
    backend spec) and the base URLs of an OpenAI-compatible server (`openai:` only, else empty)."""

    kind: str
    model: str
    base_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, kinds: SpecKinds = BACKEND_KINDS) -> Spec:
        """`KIND:MODEL[@URL,URL...]` -> Spec, or one ValueError that names `text` and the accepted forms."""
        kind, model = split_spec(text)
        if kind not in kinds.names or not model:
            raise kinds.error(text)
        if kind == kinds.wraps:
            try:
                inner = cls.parse(model, BACKEND_KINDS)
            except ValueError as err:
                raise ValueError(f"{kinds.noun} spec {text!r}: after '{kind}:' give a {err}") from None
            return cls(kind, str(inner))
        urls: tuple[str, ...] = ()
        if "@" in model and kind == "openai":
            model, _, url_text = model.rpartition("@")
            urls = tuple(u.strip() for u in url_text.split(",") if u.strip())
            if not model or not urls or any(not u.startswith(("http://", "https://")) for u in urls):
                raise kinds.error(text, f"after '@' give base URLs like {URL_EXAMPLE}")
        return cls(kind, model, urls)

    def wrapped(self) -> Spec:
        """The backend spec a `parsed:` simulator spec wraps."""
        return Spec.parse(self.model, BACKEND_KINDS)

    def __str__(self) -> str:
        urls = f"@{','.join(self.base_urls)}" if self.base_urls else ""
        return f"{self.kind}:{self.model}{urls}"
