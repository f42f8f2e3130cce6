"""Which units of a subject model to read, and the forward hooks that read them.

Hook points (what `collect` stores, documented once here):
- `mlp` neurons: the INPUT of the MLP's output projection (`mlp.down_proj` in Llama/Qwen2/Gemma,
  `mlp.c_proj` in GPT-2), i.e. act_fn(gate) * up for gated MLPs, GELU(fc) for GPT-2. These are
  signed, so by default each neuron is mined twice: polarity + reads `a`, polarity - reads `-a`.
- `sae` / `transcoder` latents: the encoder output of a local SAE applied at its own hook site
  (see neuroscribe.saes); non-negative, so one polarity.
The subject runs in the dtype asked for; captured activations are cast to float32 before mining
and stored raw (no normalisation; prompts normalise per feature when they display them).

Feature spec grammar (items joined with ';' or given as several --features options):
  mlp:LAYERS[:INDICES]        LAYERS/INDICES like 3, 0-3, 1,5,7  (no INDICES = every neuron)
  sae:PATH[:INDICES]          a local SAE folder (sae-lens or sparsify layout)
  transcoder:PATH[:INDICES]   same, for transcoders
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuroscribe.bases import BASIS_KINDS, hook_point, load_basis
from neuroscribe.models import decoder_layers, down_proj_module, mlp_width
from neuroscribe.records import FeatureId
from neuroscribe.saes import check_compatible, hooked_tensor, load_sparse_encoder, resolve_hook_module


class FeatureSpecError(ValueError):
    pass


@dataclass(frozen=True)
class FeatureGroup:
    """Features read at one hook: one MLP layer, or one sparse encoder."""

    kind: str
    layer: int
    indices: tuple[int, ...]  # unit indices within the layer / encoder
    polarities: tuple[int, ...]
    encoder_path: str | None = None

    def feature_ids(self) -> list[FeatureId]:
        return [FeatureId(self.kind, self.layer, i, p) for p in self.polarities for i in self.indices]


def _parse_ints(text: str, what: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise FeatureSpecError(f"features: cannot read {what} {text!r} (use e.g. 3, 0-3 or 1,5,7)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise FeatureSpecError(f"features: empty range {part!r} in {what}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def parse_feature_spec(spec: str | Sequence[str], model, polarity: str = "auto") -> list[FeatureGroup]:
    """Parse a feature spec against a loaded model; every error names the item and what is wrong."""
    items = [s for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(";") if s.strip()]
    if not items:
        raise FeatureSpecError("features: empty spec (e.g. 'mlp:0-3' or 'sae:path/to/sae')")
    if polarity not in ("auto", "both", "positive"):
        raise FeatureSpecError(f"polarity must be auto, both or positive, not {polarity!r}")
    n_layers = len(decoder_layers(model))
    groups: list[FeatureGroup] = []
    for item in items:
        kind, _, rest = item.strip().partition(":")
        if kind == "mlp":
            layers_text, _, idx_text = rest.partition(":")
            pols = (1,) if polarity == "positive" else (1, -1)
            for layer in _parse_ints(layers_text, "layers"):
                if layer >= n_layers:
                    raise FeatureSpecError(
                        f"features {item!r}: layer {layer} does not exist (model has layers 0..{n_layers - 1})"
                    )
                width = mlp_width(model, layer)
                idx = _parse_ints(idx_text, "indices") if idx_text else list(range(width))
                if idx and idx[-1] >= width:
                    raise FeatureSpecError(
                        f"features {item!r}: neuron {idx[-1]} out of range (layer {layer} has {width})"
                    )
                groups.append(FeatureGroup("mlp", layer, tuple(idx), pols))
        elif kind in ("sae", "transcoder"):
            groups.append(_encoder_group(kind, rest, model, polarity, item))
        elif kind == "basis":
            groups.append(_basis_group(rest, polarity, item))
        else:
            raise FeatureSpecError(
                f"features {item!r}: unknown kind {kind!r} (mlp, sae, transcoder, or a control basis "
                "random/pca/ica, which collect fits into basis:FILE)"
            )
    return groups


def _encoder_group(kind: str, rest: str, model, polarity: str, item: str) -> FeatureGroup:
    path, idx_text = rest, ""
    m = re.fullmatch(r"(.*):([\d,\-\s]+)", rest)
    if m:
        path, idx_text = m.group(1), m.group(2)
    enc = load_sparse_encoder(path)
    check_compatible(enc, model)
    idx = _parse_ints(idx_text, "indices") if idx_text else list(range(enc.d_latent))
    if idx and idx[-1] >= enc.d_latent:
        raise FeatureSpecError(f"features {item!r}: latent {idx[-1]} out of range ({enc.d_latent} latents)")
    pols = (1, -1) if polarity == "both" else (1,)
    return FeatureGroup(enc.kind, enc.site.layer, tuple(idx), pols, encoder_path=path)


def _basis_group(path: str, polarity: str, item: str) -> FeatureGroup:
    """A fitted control basis (`neuroscribe.bases`): every direction, both signs unless positive only."""

    basis = load_basis(path)
    pols = (1,) if polarity == "positive" else (1, -1)
    return FeatureGroup(basis.kind, basis.spec.layer, tuple(range(basis.d_latent)), pols, encoder_path=path)


class _StopForward(Exception):
    """Raised by the deepest hook: layers after it are not needed, so they are not computed."""


class ActivationReader:
    """Registers hooks for feature groups; `read(input_ids, attention_mask)` returns [B, T, F] float32.

    Column order is `self.features` (group by group, polarity-major within a group).
    """

    def __init__(self, model, groups: Sequence[FeatureGroup], stop_early: bool = True):
        self.model, self.groups = model, list(groups)
        self.features = [f for g in self.groups for f in g.feature_ids()]
        self._captured: dict[int, torch.Tensor] = {}
        self._handles = []
        self._encoders = {}
        self.stop_early = stop_early
        layers = decoder_layers(model)
        for gi, g in enumerate(self.groups):
            if g.kind == "mlp":
                module, side = down_proj_module(layers[g.layer]), "pre"
            elif g.kind in BASIS_KINDS:
                basis = load_basis(g.encoder_path).to(next(model.parameters()).device)
                self._encoders[gi] = basis
                module, side = hook_point(model, basis.spec.layer, basis.spec.site)
            else:
                enc = load_sparse_encoder(g.encoder_path).to(next(model.parameters()).device)
                self._encoders[gi] = enc
                module, side = resolve_hook_module(model, enc.site)
            self._handles.append(self._register(module, side, gi))

    def _register(self, module, side: str, gi: int):
        def capture(x: torch.Tensor) -> None:
            g = self.groups[gi]
            if gi in self._encoders:
                x = self._encoders[gi].encode(x)
            cols = x[..., list(g.indices)].float()
            self._captured[gi] = torch.cat([cols * p for p in g.polarities], dim=-1)
            if self.stop_early and len(self._captured) == len(self.groups):
                raise _StopForward

        if side == "pre":
            return module.register_forward_pre_hook(
                lambda mod, args, kwargs: capture(hooked_tensor("pre", args, kwargs)), with_kwargs=True
            )
        return module.register_forward_hook(lambda mod, args, out: capture(hooked_tensor("post", args, None, out)))

    @torch.no_grad()
    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._captured.clear()
        with contextlib.suppress(_StopForward):  # the deepest hook stops the forward on purpose
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        missing = [self.groups[i] for i in range(len(self.groups)) if i not in self._captured]
        if missing:
            raise RuntimeError(f"hooks for {missing} did not fire")
        return torch.cat([self._captured[i] for i in range(len(self.groups))], dim=-1)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> ActivationReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
