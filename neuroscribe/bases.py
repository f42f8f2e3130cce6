"""Control bases: random, PCA and ICA directions at a hook site, collected like any other feature.

"Sparse-coding directions are more interpretable than random directions, PCA and ICA" is checked by
explaining and scoring all of them on the same tokens. A basis is fitted on hook-site activations of
a corpus sample (`fit_windows` windows of the collect run's own corpus, every window token pooled; the
tokenizer's prefix and each window's context tokens are read but left out of the fit, as no exemplar
ever holds them: a BOS or sink position would otherwise pull the mean and the top components):
- random: orthonormal directions (QR of a seeded Gaussian matrix); the data only sets the mean;
- pca: the top principal components (scikit-learn `PCA`);
- ica: independent components (scikit-learn `FastICA`, unit-variance whitening; each unmixing row
  normalised to unit length, so an activation is a projection like the others).
A feature's activation is the projection of the centred activation on its direction, `(x - mean) · w`;
a direction has no sign, so each comes in both polarities (like an MLP neuron).

Centring, a choice: MLP neurons and SAE latents are read as they are (not centred), while a projection
is centred by default, the usual convention of PCA and ICA (each direction's activation has mean 0 over
the fit sample, so about half the tokens sit above 0: dense). `KIND:LAYER[.SITE]:N:uncentred` reads
`x · w` instead, with the same directions (fitted on centred data either way), which is how a neuron
reads its input. The basis file records which (`centred`).

Reading vs writing. The direction a feature is *read* along (`directions`, ICA's unmixing row) is not in
general the direction it *writes* (ICA's mixing column): the data is `x = mean + sum_j s_j a_j`, so one
unit of feature j adds `a_j`. `LinearBasis.writes` is that dual basis, the pseudo-inverse of the reading
directions (rows `b_j` with `w_i · b_j = [i == j]`): scikit-learn's `mixing_` is exactly the pseudo-inverse
of its `components_`, so for ICA `b_j` is the mixing column scaled by the unmixing row's norm (the
normalisation above), and for the orthonormal random and PCA bases it is the direction itself. The
output side (logit lens, steering) uses `writes`; an old basis file needs nothing new (it is computed).

Sites: "mlp_hidden" (the MLP's hidden layer, the input of its down projection: the space whose
standard basis is the MLP neurons, the like-for-like control) and the encoder sites of `saes.SITES`.
Spec in collect: `pca:LAYER[.SITE]:N[:uncentred]` (default site mlp_hidden), e.g. `pca:6:32`,
`ica:6.resid_post:16`, `random:6:32:uncentred`. The fitted basis is saved in the store (`bases/`) and named in its meta.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuroscribe.models import decoder_layers, down_proj_module, mlp_width
from neuroscribe.saes import SITES, HookSite, hooked_tensor, resolve_hook_module

BASIS_KINDS: tuple[str, ...] = ("random", "pca", "ica")
DEFAULT_SITE = "mlp_hidden"


class BasisSpecError(ValueError):
    """A basis spec or file that cannot be used; the message names the item or the file."""


@dataclass(frozen=True)
class BasisSpec:
    kind: str
    layer: int
    site: str
    n: int
    centred: bool = True  # module doc: projections of x - mean (default) or of x

    @property
    def file_name(self) -> str:
        return f"{self.kind}-L{self.layer}-{self.site}-{self.n}{'' if self.centred else '-uncentred'}.safetensors"


def parse_basis_spec(item: str) -> BasisSpec:
    """`pca:6:32` / `ica:6.resid_post:16` -> BasisSpec; errors name the item."""

    m = re.fullmatch(r"(random|pca|ica):(\d+)(?:\.(\w+))?:(\d+)(:uncentred)?", item.strip())
    if not m:
        raise BasisSpecError(f"features {item!r}: a control basis is KIND:LAYER[.SITE]:N[:uncentred], e.g. 'pca:6:32'")
    kind, layer, site, n = m.group(1), int(m.group(2)), m.group(3) or DEFAULT_SITE, int(m.group(4))
    if site != DEFAULT_SITE and site not in SITES:
        raise BasisSpecError(f"features {item!r}: site {site!r} is not one of {(DEFAULT_SITE, *SITES)}")
    if n < 1:
        raise BasisSpecError(f"features {item!r}: N must be at least 1")
    return BasisSpec(kind, layer, site, n, centred=m.group(5) is None)


class LinearBasis(torch.nn.Module):
    """`encode(x[..., d]) -> float32 [..., n]`: projections of the centred input on n unit directions."""

    def __init__(self, spec: BasisSpec, directions: torch.Tensor, mean: torch.Tensor, source: str = ""):
        super().__init__()
        self.spec, self.source = spec, source
        self.kind, self.d_latent = spec.kind, directions.shape[0]
        self.register_buffer("directions", directions.detach().float().contiguous())  # [n, d]
        self.register_buffer("mean", mean.detach().float())  # [d]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.directions.device, dtype=torch.float32)
        return (x - self.mean) @ self.directions.T

    @property
    def writes(self) -> torch.Tensor:
        """[n, d] what one unit of each feature adds to the site (module doc: the dual basis, ICA's mixing
        columns): `encode(mean + writes[j])` is the j-th unit vector."""
        return torch.linalg.pinv(self.directions.double()).T.float().contiguous()

    def save(self, path: Path) -> Path:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.spec.kind, "layer": str(self.spec.layer), "site": self.spec.site, "n": str(self.spec.n)}
        meta["centred"] = str(self.spec.centred).lower()
        save_file({"directions": self.directions.cpu(), "mean": self.mean.cpu()}, str(path), metadata=meta)
        return path


def load_basis(path: str | Path) -> LinearBasis:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BasisSpecError(f"{path}: no such basis file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        missing = [k for k in ("kind", "layer", "site", "n") if k not in meta]
        if missing:
            raise BasisSpecError(f"{path}: field {missing[0]} missing from the basis metadata")
        centred = meta.get("centred", "true") == "true"  # files before the choice existed were centred
        spec = BasisSpec(meta["kind"], int(meta["layer"]), meta["site"], int(meta["n"]), centred)
        return LinearBasis(spec, f.get_tensor("directions"), f.get_tensor("mean"), source=str(path))


def hook_point(model, layer: int, site: str) -> tuple[torch.nn.Module, str]:
    """(module, side) a basis at `site` of block `layer` reads."""
    if site == DEFAULT_SITE:
        return down_proj_module(decoder_layers(model)[layer]), "pre"
    return resolve_hook_module(model, HookSite(layer, site))


def check_basis_spec(spec: BasisSpec, model, item: str) -> None:
    """Refuse, before anything is fitted or written, a layer the model lacks or more directions than the
    site has dimensions (hooking layer 99 of a 2-layer model would fail deep in the forward pass)."""
    n_layers = len(decoder_layers(model))
    if spec.layer >= n_layers:
        raise BasisSpecError(
            f"features {item!r}: layer {spec.layer} does not exist (model has layers 0..{n_layers - 1})"
        )
    d = mlp_width(model, spec.layer) if spec.site == DEFAULT_SITE else getattr(model.config, "hidden_size", None)
    if d is not None and spec.n > d:
        raise BasisSpecError(f"features {item!r}: {spec.n} directions asked for, the site has only {d} dimensions")


def fit_directions(kind: str, samples: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """[n, d] unit directions of `kind` fitted on `samples` [N, d] (module doc)."""
    d = samples.shape[1]
    if n > d:
        raise BasisSpecError(f"{kind}: {n} directions asked for, the site has only {d} dimensions")
    if kind == "random":
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, n)))
        return q.T
    if samples.shape[0] < n:
        raise BasisSpecError(f"{kind}: {samples.shape[0]} samples cannot fit {n} components; use more fit windows")
    if kind == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=n, random_state=seed).fit(samples).components_
    if kind == "ica":
        from sklearn.decomposition import FastICA

        ica = FastICA(n_components=n, whiten="unit-variance", random_state=seed, max_iter=400, tol=1e-3)
        rows = ica.fit(samples).components_
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
    raise BasisSpecError(f"unknown basis kind {kind!r} (one of {BASIS_KINDS})")


@torch.no_grad()
def fit_basis(spec: BasisSpec, model, batches, seed: int = 0, skip: int = 0) -> LinearBasis:
    """Fit `spec` on the hook-site activations of `batches` (an iterable of [B, T] input-id tensors): every
    position from `skip` on pooled (the first `skip` are the tokenizer's prefix and the windows' context,
    read for their effect on later positions but never fitted on: module doc)."""
    module, side = hook_point(model, spec.layer, spec.site)

    seen: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        seen.append(x[:, skip:].float().flatten(0, -2).cpu())

    if side == "pre":
        handle = module.register_forward_pre_hook(
            lambda mod, args, kwargs: keep(hooked_tensor("pre", args, kwargs)), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(lambda mod, args, out: keep(hooked_tensor("post", args, None, out)))
    try:
        for ids in batches:
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    if not seen or not sum(len(x) for x in seen):
        raise BasisSpecError(f"{spec.kind}: no fit window (the corpus gave none)")
    samples = torch.cat(seen).numpy().astype(np.float64)
    mean = samples.mean(axis=0)
    directions = fit_directions(spec.kind, samples - mean, spec.n, seed)
    offset = mean if spec.centred else np.zeros_like(mean)  # what encode subtracts (module doc: centring)
    return LinearBasis(spec, torch.from_numpy(directions.astype(np.float32)), torch.from_numpy(offset))
