"""What an LLM call costs: a price table per (backend kind, model), in USD per million tokens.

Local backends cost nothing. A remote model with no price is *unpriced*: `cost` returns None and
callers record 0 with a flag rather than invent a number.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

FREE_KINDS = frozenset({"hf", "vllm"})


@dataclass(frozen=True)
class Price:
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Prices by kind, then model glob, checked in order (so put specific globs first)."""

    entries: Mapping[str, tuple[tuple[str, Price], ...]]

    @classmethod
    def default(cls) -> PriceTable:
        text = resources.files("neuroscribe").joinpath("data/prices.yaml").read_text()
        return cls.from_mapping(yaml.safe_load(text) or {}, origin="neuroscribe/data/prices.yaml")

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        return cls.from_mapping(yaml.safe_load(Path(path).read_text()) or {}, origin=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping, origin: str = "prices") -> PriceTable:
        entries: dict[str, tuple[tuple[str, Price], ...]] = {}
        for kind, models in data.items():
            if not isinstance(models, Mapping):
                raise ValueError(f"{origin}: field {kind!r} must map model names to prices")
            rows = []
            for model, price in models.items():
                try:
                    rows.append((str(model), Price(float(price["input"]), float(price["output"]))))
                except (TypeError, KeyError, ValueError):
                    raise ValueError(
                        f"{origin}: field {kind}.{model} needs numeric 'input' and 'output' (USD per 1M tokens)"
                    ) from None
            entries[str(kind)] = tuple(rows)
        return cls(entries)

    def merged(self, overrides: Mapping | PriceTable | None) -> PriceTable:
        """This table with `overrides` consulted first."""
        if overrides is None:
            return self
        extra = overrides if isinstance(overrides, PriceTable) else PriceTable.from_mapping(overrides)
        kinds = set(self.entries) | set(extra.entries)
        return PriceTable({k: extra.entries.get(k, ()) + self.entries.get(k, ()) for k in kinds})

    def price(self, kind: str, model: str) -> Price | None:
        if kind in FREE_KINDS:
            return Price(0.0, 0.0)
        for pattern, price in self.entries.get(kind, ()):
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return None

    def cost(self, kind: str, model: str, tokens_in: int, tokens_out: int) -> float | None:
        price = self.price(kind, model)
        return None if price is None else price.cost(tokens_in, tokens_out)


def resolve_prices(prices: PriceTable | Mapping | str | Path | None) -> PriceTable:
    """The default table, with a user's table (object, mapping or YAML path) taking precedence."""
    if isinstance(prices, (str, Path)):
        prices = PriceTable.from_file(prices)
    return PriceTable.default().merged(prices)
