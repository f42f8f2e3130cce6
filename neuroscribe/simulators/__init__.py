"""Simulators: one interface (`base.Simulator`), one module per implementation, one factory.

Specs, the same strings everywhere a simulator is accepted (explain, score, eval, demo):
  hf:MODEL                      prompted all-at-once simulator on a local model (`allatonce`)
  openai:MODEL@URL[,URL...]     the same prompt through an OpenAI-compatible server's echo logprobs (`http`)
  parsed:openai:MODEL@URL       logprob-free fallback: asks for the numbers and parses them (`http`)
  vllm:MODEL                    the prompted simulator on a vLLM engine, every prompt in one call (`vllm_engine`)
  finetuned:PATH                a simulator neuroscribe trained (`finetuned`; format in `finetuned_format`)
"""

from __future__ import annotations

from collections.abc import Callable

from neuroscribe.cache import Cache
from neuroscribe.simulators.base import Simulator, YesNoJudge, refuse_explain_split, simulated
from neuroscribe.specs import SIMULATOR_KINDS, Spec

__all__ = ["Simulator", "YesNoJudge", "load_simulator", "refuse_explain_split", "simulated", "SPECS"]


def _hf(spec: Spec, cache: Cache | None, dtype: str, batch_size: int, **remote) -> Simulator:
    from neuroscribe.models import dtype_name, load_shared
    from neuroscribe.simulators.allatonce import LocalSimulator

    model, tok = load_shared(spec.model, dtype)
    weights = dtype_name(dtype)  # results depend on precision, and the spec keys the score cache
    keyed = str(spec) if weights == "float32" else f"{spec}@{weights}"
    return LocalSimulator(model, tok, batch_size=batch_size, spec=keyed)


def _finetuned(spec: Spec, cache: Cache | None, dtype: str, batch_size: int, **remote) -> Simulator:
    from neuroscribe.simulators.finetuned import load_finetuned_simulator

    return load_finetuned_simulator(spec.model, dtype=dtype, batch_size=batch_size)


def _echo(spec: Spec, cache: Cache | None, dtype: str, batch_size: int, **remote) -> Simulator:
    from neuroscribe.backends import load_backend
    from neuroscribe.simulators.http import EchoLogprobSimulator

    return EchoLogprobSimulator(load_backend(spec, cache, stage="simulate", **remote))


def _parsed(spec: Spec, cache: Cache | None, dtype: str, batch_size: int, **remote) -> Simulator:
    from neuroscribe.backends import load_backend
    from neuroscribe.simulators.http import ParsedNumberSimulator

    return ParsedNumberSimulator(load_backend(spec.wrapped(), cache, stage="simulate", **remote))


def _vllm(spec: Spec, cache: Cache | None, dtype: str, batch_size: int, **remote) -> Simulator:
    from neuroscribe.backends import load_backend
    from neuroscribe.models import dtype_name
    from neuroscribe.simulators.vllm_engine import DEFAULT_TOP_K, VLLMSimulator

    backend = load_backend(spec, cache, stage="simulate", dtype=dtype_name(dtype), max_logprobs=DEFAULT_TOP_K)
    return VLLMSimulator(backend)


SPECS: dict[str, Callable[..., Simulator]] = {
    "hf": _hf,
    "finetuned": _finetuned,
    "openai": _echo,
    "parsed": _parsed,
    "vllm": _vllm,
}


def load_simulator(
    spec: str | Spec,
    cache: Cache | None = None,
    dtype: str = "float32",
    batch_size: int = 8,
    limits=None,
    budget=None,
) -> Simulator:
    """The simulator a spec names (a string, or a Spec parsed already with SIMULATOR_KINDS).
    `limits` / `budget` (backends.CallLimits / Budget) bound HTTP simulators."""
    parsed = spec if isinstance(spec, Spec) else Spec.parse(spec, SIMULATOR_KINDS)
    if parsed.kind not in SPECS:
        raise SIMULATOR_KINDS.error(str(spec))
    return SPECS[parsed.kind](parsed, cache, dtype, batch_size, limits=limits, budget=budget)
