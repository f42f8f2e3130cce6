"""Stage configs as command lines: one dataclass per stage, its fields documented once.

A stage config is a dataclass whose every field has a docstring, written as a string literal on the
line after the field (as delphi's configs do):

    k: int = 4
    \"\"\"Candidates per feature (best-of-k).\"\"\"

`command(app, Config, run)` registers a typer command whose options are exactly those fields, with
the field's default and docstring as its help, so no default or help text exists twice. Nested
config fields (e.g. `CollectConfig.mining`) are flattened into options of their own; two fields that
would become the same option are refused when the command is built (`OptionCollision`). A field typed
`Literal["a", "b"]` (or `tuple[Literal[...], ...]`) becomes an option of those choices only, listed
in --help and refused by the parser with the choices named; the config still receives the plain
string, and `choice_fields` gives a config's `__post_init__` the same choices to check Python callers
against. `to_dict` gives the plain-JSON form that every stage saves into its run folder.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import typer

# Field metadata a config may set: {"cli": False} keeps a field off the command line,
# {"sep": ","} splits each value of a tuple field on that separator too.


MAX_CHOICES_METAVAR = 24  # longer choice lists go into the help text ("Choices: a, b.")


class OptionCollision(TypeError):
    """Two fields of a config (nested ones flattened) would become the same command-line option."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal right after the field), over the class's MRO."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def undocumented(cls: type) -> list[str]:
    """Fields of `cls` (and of its nested configs) without a docstring: the lint every config passes."""
    docs, out = field_docs(cls), []
    for f, hint in _fields(cls):
        if _is_config(hint):
            out += [f"{f.name}.{name}" for name in undocumented(hint)]
        elif f.name not in docs:
            out.append(f.name)
    return out


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The choices of a `Literal["a", "b"]` type (nested Literals flattened), else None."""
    if typing.get_origin(hint) is not typing.Literal:
        return None
    choices = typing.get_args(hint)
    if not all(isinstance(c, str) for c in choices):
        raise TypeError(f"{hint}: a choice field's Literal must hold strings only")
    return choices


@cache
def choice_fields(cls: type) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Field name -> (its Literal's choices, whether None is allowed too) for each field of `cls` typed
    `Literal[...]`, `Literal[...] | None` or `tuple[Literal[...], ...]` (nested configs not included)."""
    out = {}
    for f, hint in _fields(cls):
        base, optional = _optional(hint)
        if typing.get_origin(base) is tuple:
            base = typing.get_args(base)[0]
        choices = literal_choices(base)
        if choices is not None:
            out[f.name] = (choices, optional)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return ...


@dataclasses.dataclass(frozen=True)
class _Option:
    path: tuple[str, ...]  # field names from the top config down
    name: str  # python parameter name
    annotation: Any
    info: Any  # typer.Option / typer.Argument
    sep: str | None = None
    is_tuple: bool = False
    tuple_of: Any = str
    flags: tuple[str, ...] = ()  # what the command line calls it (none: positional)
    choices: tuple[str, ...] | None = None  # a tuple-of-Literal field's choices, checked after splitting


def _options(
    cls: type, prefix: tuple[str, ...] = (), positional: tuple[str, ...] = (), rename: dict[str, str] | None = None
) -> list[_Option]:
    """The options of `cls`, nested configs flattened: a nested field keeps its own name as its flag
    (`CollectConfig.mining.top_k` is --top-k). `rename` maps a field name, or a dotted path
    (`limits.seed`) for one nested field only, to another flag name."""
    docs, out, rename = field_docs(cls), [], rename or {}
    for f, hint in _fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        path = prefix + (f.name,)
        if _is_config(hint):
            out += _options(hint, path, positional, rename)
            continue
        default = _default(f)
        base, optional = _optional(hint)
        help_text = docs.get(f.name, "")
        flag = "--" + rename.get(".".join(path), rename.get(f.name, f.name)).replace("_", "-")
        is_tuple = typing.get_origin(base) is tuple
        item = typing.get_args(base)[0] if is_tuple else str
        item_choices = literal_choices(item) if is_tuple else None
        choices = item_choices if is_tuple else literal_choices(base)
        metavar = None
        if choices is not None:  # a short list in the metavar column; a long one would squeeze every help
            shown = f"<{'|'.join(choices)}>"
            metavar = shown if len(shown) <= MAX_CHOICES_METAVAR and not f.metadata.get("sep") else "<choice>"
            if metavar != shown:
                help_text += f" Choices: {', '.join(choices)}."
        if item_choices is not None:  # typer takes no list of Literal: plain strings, checked in _convert
            item = str
        if is_tuple:
            annotation: Any = list[item] | None
            default = list(default) if default not in (..., None) else default
        elif base is Path or base is str:
            annotation = str | None if optional else str
        else:  # numbers, bool, Literal[...] (typer makes a choice option of it, values stay str), Enum
            annotation = base | None if optional else base
        if f.name in positional:
            flags: tuple[str, ...] = ()
            info = typer.Argument(default, help=help_text, show_default=default is not ...)
        elif base is bool:
            flags = (flag, f"--no-{flag[2:]}")
            info = typer.Option(default, f"{flag}/--no-{flag[2:]}", help=help_text)
        else:
            flags = (flag,)
            info = typer.Option(default, flag, help=help_text, show_default=default is not ..., metavar=metavar)
        name = "_".join(path)
        sep = f.metadata.get("sep")
        out.append(_Option(path, name, annotation, info, sep, is_tuple, item, flags, item_choices))
    return out


def _unique(cls: type, opts: list[_Option]) -> None:
    """Refuse two fields that flatten into the same option (or the same python parameter)."""
    seen: dict[str, _Option] = {}
    for o in opts:
        for key in (f"parameter {o.name}", *o.flags):
            other = seen.setdefault(key, o)
            if other is not o:
                a, b = ".".join(other.path), ".".join(o.path)
                what = f"the option {key}" if key.startswith("--") else f"the {key}"
                raise OptionCollision(
                    f"{cls.__name__}: fields {a} and {b} both become {what}; give one another name "
                    f"(command(..., rename={{{b!r}: ...}})) or keep it off the command line (metadata={{'cli': False}})"
                )


def fail(message: str) -> typing.NoReturn:
    """The command line's one way to end on a clear error: one red `error:` line, exit code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def build(cls: type, values: dict[str, Any], prefix: tuple[str, ...] = ()) -> Any:
    """An instance of `cls` from flattened option values (nested configs rebuilt, lists made tuples)."""
    kwargs = {}
    for f, hint in _fields(cls):
        name = "_".join(prefix + (f.name,))
        if _is_config(hint):
            kwargs[f.name] = build(hint, values, prefix + (f.name,))
        elif name in values:
            kwargs[f.name] = values[name]
    return cls(**kwargs)


def _convert(opt: _Option, value: Any) -> Any:
    if opt.is_tuple and value is not None:
        items = [p.strip() for v in value for p in str(v).split(opt.sep)] if opt.sep else list(value)
        items = [p for p in items if p != ""]
        bad = [p for p in items if opt.choices is not None and p not in opt.choices]
        if bad:  # as the parser words a bad choice of a single-valued option
            choices = ", ".join(map(repr, opt.choices or ()))
            hint = f"'{opt.flags[0]}'" if opt.flags else opt.name.upper()
            raise typer.BadParameter(f"{bad[0]!r} is not one of {choices}.", param_hint=hint)
        return tuple(opt.tuple_of(p) for p in items)
    return value


def command(
    app: typer.Typer,
    cls: type,
    run: Callable[[Any], Any],
    *,
    name: str | None = None,
    positional: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
    help: str | None = None,
) -> None:
    """Register `run(cls(**options))` as the typer command `name` (default: run's name).

    Raises OptionCollision (at once, not when the command runs) if two fields flatten into one option."""
    opts = _options(cls, positional=positional, rename=rename)
    _unique(cls, opts)

    def callback(**values: Any) -> Any:
        try:
            config = build(cls, {o.name: _convert(o, values[o.name]) for o in opts})
        except ValueError as err:  # a config's own checks (__post_init__), before the stage writes anything
            fail(str(err))
        return run(config)

    params = [
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.info, annotation=o.annotation) for o in opts
    ]
    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {o.name: o.annotation for o in opts}
    callback.__name__ = (name or run.__name__).replace("-", "_")
    callback.__doc__ = help or (run.__doc__ or "").strip().split("\n\n")[0]
    app.command(name or run.__name__.replace("_", "-"))(callback)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON form of a config, for a run's meta.json (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, enum.Enum):
            return v.value
        return v

    return plain(config)
