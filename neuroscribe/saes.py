"""Sparse autoencoders and transcoders loaded from local folders, and where to hook them in an HF model.

Two on-disk layouts are read (auto-detected by file name):

* **sae-lens** — `cfg.json` + `sae_weights.safetensors` with `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
  `W_dec [d_sae, d_out]`, `b_dec [d_out]` (d_out = d_in for SAEs) and, for JumpReLU, `threshold [d_sae]`.
  Config keys of both the pre-6.0 format (`hook_name`/`hook_point`, `activation_fn_str`,
  `activation_fn_kwargs.k`) and the 6.x format (`metadata.hook_name`, `activation_fn`, `k`) are read.
  Architectures: `standard` (ReLU, or TopK when the activation is "topk"), `jumprelu`, `topk`,
  `transcoder`, `skip_transcoder`, `jumprelu_transcoder`. The encoder is, as in sae-lens,
  `pre = (norm(x) - b_dec·apply_b_dec_to_input) @ W_enc + b_enc`, then ReLU / ReLU·[pre > threshold] /
  ReLU of the k largest. Transcoders never subtract `b_dec` (it lives in the output space).
  `normalize_activations`: "none", "constant_norm_rescale", "layer_norm" as sae-lens computes them;
  "expected_average_only_in" is refused because its scale factor is not stored in the folder.
* **EleutherAI sparsify** — `cfg.json` (`d_in`, `num_latents` or `expansion_factor`, `k`, `activation`,
  `transcode`) + `sae.safetensors` with `encoder.weight [num_latents, d_in]`, `encoder.bias`,
  `W_dec [num_latents, d_out]`, `b_dec [d_out]`. Encoder as in sparsify: `relu(encoder(x - b_dec))`
  (no `b_dec` subtraction when `transcode`) then top-k ("topk") or the max of each of k groups
  ("groupmax"). The folder is named after the hooked module (`layers.6`, `layers.6.mlp`); an SAE reads
  the module's output, a transcoder its input.

Hook sites (`HookSite.site`), as HF modules of Llama/Qwen2/Gemma2/GPT-2 decoder block L:
  resid_pre  input of block L             (TransformerLens `blocks.L.hook_resid_pre`)
  resid_mid  input of the pre-MLP norm    (`blocks.L.hook_resid_mid`, and `blocks.L.hook_mlp_in`,
             which TransformerLens takes *before* ln2)
  resid_post output of block L            (`blocks.L.hook_resid_post`)
  mlp_in     input of the MLP module, i.e. after the pre-MLP norm (`blocks.L.ln2.hook_normalized`;
             caveat: TransformerLens takes that before the norm's own weight, HF after it)
  mlp_out    what the MLP adds to the residual (`blocks.L.hook_mlp_out`; Gemma2's post-MLP norm
             output, the raw MLP output elsewhere)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroscribe.models import decoder_layers
from neuroscribe.runs.files import RunFileError, read_json

SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "mlp_in", "mlp_out")
ACTIVATIONS: tuple[str, ...] = ("relu", "jumprelu", "topk", "groupmax")
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# architecture -> (kind, activation); "standard" may become topk through its activation_fn.
SAE_LENS_ARCHITECTURES = {
    "standard": ("sae", "relu"),
    "jumprelu": ("sae", "jumprelu"),
    "topk": ("sae", "topk"),
    "transcoder": ("transcoder", "relu"),
    "skip_transcoder": ("transcoder", "relu"),
    "jumprelu_transcoder": ("transcoder", "jumprelu"),
}
_TL_HOOKS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_in": "resid_mid",
    "hook_resid_post": "resid_post",
    "ln2.hook_normalized": "mlp_in",
    "hook_mlp_out": "mlp_out",
}
_SPARSIFY_HOOKPOINT = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(\.mlp)?$")


class SparseEncoderError(ValueError):
    """A sparse encoder folder that cannot be loaded, or one that does not fit the model."""


@dataclass(frozen=True)
class HookSite:
    """Where in decoder block `layer` an encoder reads its input (see the module docstring)."""

    layer: int
    site: str

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"hook site {self.site!r} is not one of {SITES}")
        if self.layer < 0:
            raise ValueError(f"hook site layer must be >= 0, got {self.layer}")

    def __str__(self) -> str:
        return f"L{self.layer}.{self.site}"


class SparseEncoder(torch.nn.Module):
    """The encoder half of an SAE or transcoder: `encode(x[..., d_in]) -> float32 [..., d_latent]`.

    Weights are kept as float32 buffers (so `.to(device)` moves them and nothing asks for gradients).
    """

    def __init__(
        self,
        *,
        kind: str,
        site: HookSite,
        W_enc: Tensor,
        b_enc: Tensor,
        activation: str,
        input_bias: Tensor | None = None,
        threshold: Tensor | None = None,
        k: int | None = None,
        input_norm: str = "none",
        source: str = "",
    ):
        super().__init__()
        if kind not in ("sae", "transcoder"):
            raise ValueError(f"kind must be 'sae' or 'transcoder', not {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.kind, self.site, self.activation, self.source = kind, site, activation, source
        self.d_in, self.d_latent = W_enc.shape
        self.k, self.input_norm = k, input_norm
        self.register_buffer("W_enc", W_enc.detach().float().contiguous())
        self.register_buffer("b_enc", b_enc.detach().float())
        self.register_buffer("input_bias", None if input_bias is None else input_bias.detach().float())
        self.register_buffer("threshold", None if threshold is None else threshold.detach().float())

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return f"{self.kind} at {self.site}, d_in={self.d_in}, d_latent={self.d_latent}, {self.activation}{k}"

    def _normalize(self, x: Tensor) -> Tensor:
        if self.input_norm == "constant_norm_rescale":
            return x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        if self.input_norm == "layer_norm":  # sae-lens: unbiased std, eps added to the std
            x = x - x.mean(dim=-1, keepdim=True)
            return x / (x.std(dim=-1, keepdim=True) + 1e-5)
        return x

    def pre_activations(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{self.source}: input has last dimension {x.shape[-1]}, encoder expects d_in={self.d_in}")
        x = self._normalize(x.to(device=self.W_enc.device, dtype=torch.float32))
        if self.input_bias is not None:
            x = x - self.input_bias
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.activation == "topk":  # relu is monotone: relu-then-topk (sparsify) == topk-then-relu (sae-lens)
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        acts = torch.relu(pre).unflatten(-1, (self.k, -1))  # groupmax: the max of each of k groups
        best = acts.max(dim=-1, keepdim=True)
        return torch.zeros_like(acts).scatter_(-1, best.indices, best.values).flatten(-2)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)


# ---------------------------------------------------------------- loading


def load_sparse_encoder(path: str | Path, layer: int | None = None, site: str | None = None) -> SparseEncoder:
    """Load an SAE/transcoder folder (sae-lens or sparsify layout, auto-detected).

    `layer` / `site` override the hook site read from the config or folder name; they are needed
    when the folder does not say where it reads (e.g. a sparsify folder renamed by the user).
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise SparseEncoderError(f"sparse encoder: {folder} does not exist or is not a folder")
    if (folder / SAE_LENS_WEIGHTS).exists():
        return _load_sae_lens(folder, layer, site)
    if (folder / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(folder, layer, site)
    raise SparseEncoderError(
        f"sparse encoder: {folder} holds neither {SAE_LENS_WEIGHTS} (sae-lens) nor {SPARSIFY_WEIGHTS} (sparsify)"
    )


def _read_cfg(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "cfg.json"
    try:
        return read_json(cfg_path)
    except FileNotFoundError:
        raise SparseEncoderError(f"sparse encoder: {cfg_path} is missing") from None
    except RunFileError as e:  # garbled, or not an object: the message names the file
        raise SparseEncoderError(str(e)) from None


def _int_field(cfg: dict, name: str, cfg_path: Path, default: int | None = None) -> int:
    value = cfg.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        what = "is missing" if name not in cfg else f"must be a non-negative integer, got {value!r}"
        raise SparseEncoderError(f"{cfg_path}: field {name!r} {what}")
    return value


class _Weights:
    """Reads named tensors from one safetensors file, with errors that name the file and tensor."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt")
            self.names = set(self._file.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise SparseEncoderError(f"{path}: cannot read safetensors file ({e})") from None

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.names:
            raise SparseEncoderError(f"{self.path}: tensor {name!r} is missing (found {sorted(self.names)})")
        return tuple(self._file.get_slice(name).get_shape())

    def get(self, name: str, expected: tuple[int, ...], meaning: str) -> Tensor:
        self.expect(name, expected, meaning)
        return self._file.get_tensor(name)

    def expect(self, name: str, expected: tuple[int, ...], meaning: str) -> None:
        shape = self.shape(name)
        if shape != expected:
            raise SparseEncoderError(
                f"{self.path}: tensor {name!r} has shape {list(shape)}, expected {list(expected)} ({meaning})"
            )


def _tl_hook_site(hook_name: str) -> HookSite | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name or "")
    if m and m.group(2) in _TL_HOOKS:
        return HookSite(int(m.group(1)), _TL_HOOKS[m.group(2)])
    return None


def _resolve_site(found: HookSite | None, layer: int | None, site: str | None, where: str) -> HookSite:
    if layer is not None and site is not None:
        return HookSite(layer, site)
    if found is None and (layer is None or site is None):
        raise SparseEncoderError(
            f"{where}: cannot tell which layer and site this encoder reads; pass layer= and site= (site one of {SITES})"
        )
    return HookSite(found.layer if layer is None else layer, found.site if site is None else site)


def _load_sae_lens(folder: Path, layer: int | None, site: str | None) -> SparseEncoder:
    cfg_path = folder / "cfg.json"
    cfg = _read_cfg(folder)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    arch = cfg.get("architecture", "standard")
    if arch not in SAE_LENS_ARCHITECTURES:
        raise SparseEncoderError(
            f"{cfg_path}: architecture {arch!r} is not supported (supported: {sorted(SAE_LENS_ARCHITECTURES)})"
        )
    kind, activation = SAE_LENS_ARCHITECTURES[arch]
    if "hook_name_out" in cfg or "hook_name_out" in meta:
        kind = "transcoder"
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    if arch == "standard" and act_fn == "topk":
        activation = "topk"
    elif act_fn not in ("relu", "topk") or (act_fn == "topk" and activation != "topk"):
        raise SparseEncoderError(f"{cfg_path}: activation_fn {act_fn!r} is not supported with architecture {arch!r}")
    k = None
    if activation == "topk":  # 6.x stores k at the top level, older configs in activation_fn_kwargs
        k_value = cfg["k"] if "k" in cfg else (cfg.get("activation_fn_kwargs") or {}).get("k")
        k = _int_field({} if k_value is None else {"k": k_value}, "k", cfg_path)
    norm = cfg.get("normalize_activations", "none")
    norm = {None: "none", False: "none", True: "expected_average_only_in"}.get(norm, norm)
    if norm not in ("none", "constant_norm_rescale", "layer_norm"):
        raise SparseEncoderError(
            f"{cfg_path}: normalize_activations {norm!r} is not supported (its scale is not stored with the "
            "weights; fold it into W_enc and set it to 'none')"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise SparseEncoderError(
            f"{cfg_path}: reshape_activations {cfg['reshape_activations']!r} (attention SAEs) is not supported"
        )
    d_in = _int_field(cfg, "d_in", cfg_path)
    d_sae = _int_field(cfg, "d_sae", cfg_path)
    d_out = _int_field(cfg, "d_out", cfg_path, default=d_in) if kind == "transcoder" else d_in

    w = _Weights(folder / SAE_LENS_WEIGHTS)
    W_enc = w.get("W_enc", (d_in, d_sae), "[d_in, d_sae]")
    b_enc = w.get("b_enc", (d_sae,), "[d_sae]")
    w.expect("W_dec", (d_sae, d_out), "[d_sae, d_out]" if kind == "transcoder" else "[d_sae, d_in]")
    b_dec_shape = (d_out,)
    threshold = w.get("threshold", (d_sae,), "[d_sae]") if activation == "jumprelu" else None
    subtract = kind == "sae" and bool(cfg.get("apply_b_dec_to_input", True))  # sae-lens default: True
    input_bias = w.get("b_dec", b_dec_shape, "[d_in]") if subtract else None
    if not subtract:
        w.expect("b_dec", b_dec_shape, "[d_out]" if kind == "transcoder" else "[d_in]")

    hook_name = str(cfg.get("hook_name") or cfg.get("hook_point") or meta.get("hook_name") or "")
    found = _tl_hook_site(hook_name)
    if found is None and hook_name and (layer is None or site is None):
        raise SparseEncoderError(
            f"{cfg_path}: hook_name {hook_name!r} is not a supported hook "
            f"(blocks.L.{{{', '.join(_TL_HOOKS)}}}); pass layer= and site= to override"
        )
    if found is None and layer is None:
        layer = cfg.get("hook_layer", meta.get("hook_layer"))
    return SparseEncoder(
        kind=kind,
        site=_resolve_site(found, layer, site, str(cfg_path)),
        W_enc=W_enc,
        b_enc=b_enc,
        activation=activation,
        input_bias=input_bias,
        threshold=threshold,
        k=_check_k(k, d_sae, cfg_path),
        input_norm=norm,
        source=str(folder),
    )


def _check_k(k: int | None, d_latent: int, cfg_path: Path) -> int | None:
    if k is not None and not 0 < k <= d_latent:
        raise SparseEncoderError(
            f"{cfg_path}: field 'k' = {k} must be between 1 and the number of latents ({d_latent})"
        )
    return k


def _load_sparsify(folder: Path, layer: int | None, site: str | None) -> SparseEncoder:
    cfg_path = folder / "cfg.json"
    cfg = _read_cfg(folder)
    d_in = _int_field(cfg, "d_in", cfg_path)
    # Defaults are sparsify's own SparseCoderConfig defaults.
    n_latents = _int_field(cfg, "num_latents", cfg_path, default=0) or d_in * _int_field(
        cfg, "expansion_factor", cfg_path, default=32
    )
    k = _check_k(_int_field(cfg, "k", cfg_path, default=32), n_latents, cfg_path)
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise SparseEncoderError(f"{cfg_path}: activation {activation!r} is not supported (topk or groupmax)")
    if activation == "groupmax" and n_latents % k:
        raise SparseEncoderError(f"{cfg_path}: groupmax needs num_latents ({n_latents}) divisible by k ({k})")
    if cfg.get("gram_lookup"):
        raise SparseEncoderError(f"{cfg_path}: gram_lookup coders need an external n-gram table; not supported")
    transcode = bool(cfg.get("transcode", False))

    w = _Weights(folder / SPARSIFY_WEIGHTS)
    W = w.get("encoder.weight", (n_latents, d_in), "[num_latents, d_in]")
    b_enc = w.get("encoder.bias", (n_latents,), "[num_latents]")
    if transcode:  # the output width may differ from d_in; only the latent count must agree
        d_out = w.shape("W_dec")[-1]
        w.expect("W_dec", (n_latents, d_out), "[num_latents, d_out]")
        w.expect("b_dec", (d_out,), "[d_out]")
        input_bias = None
    else:
        w.expect("W_dec", (n_latents, d_in), "[num_latents, d_in]")
        input_bias = w.get("b_dec", (d_in,), "[d_in]")

    m = _SPARSIFY_HOOKPOINT.match(folder.name)
    found = None
    if m:  # an SAE reads the module's output, a transcoder its input
        names = ("resid_pre", "mlp_in") if transcode else ("resid_post", "mlp_out")
        found = HookSite(int(m.group(1)), names[1] if m.group(2) else names[0])
    return SparseEncoder(
        kind="transcoder" if transcode else "sae",
        site=_resolve_site(found, layer, site, f"{folder} (sparsify folder named after its hookpoint)"),
        W_enc=W.T,
        b_enc=b_enc,
        activation=activation,
        input_bias=input_bias,
        k=k,
        source=str(folder),
    )


# ---------------------------------------------------------------- the subject model


def _hidden_size(model) -> int:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise SparseEncoderError(f"cannot find the hidden size of {type(model).__name__}")


def check_compatible(encoder: SparseEncoder, model) -> None:
    """Raise SparseEncoderError unless `encoder` can read its site of `model` (layer exists, d_in fits)."""
    n_layers = len(decoder_layers(model))
    if encoder.site.layer >= n_layers:
        raise SparseEncoderError(
            f"{encoder.source}: hook layer {encoder.site.layer} does not exist (model has layers 0..{n_layers - 1})"
        )
    hidden = _hidden_size(model)
    if encoder.d_in != hidden:
        raise SparseEncoderError(
            f"{encoder.source}/cfg.json: d_in = {encoder.d_in} does not match the model's hidden size {hidden}"
        )


def resolve_hook_module(model, site: HookSite) -> tuple[torch.nn.Module, str]:
    """The module to hook for `site` and which side to read: "pre" = its input, "post" = its output.

    "pre": the tensor is the first positional argument (Llama/Qwen2/Gemma2/GPT-2 blocks, norms and MLPs
    receive hidden states positionally); "post": the output, or its first element if a tuple.
    `hooked_tensor` does both for a hook registered `with_kwargs=True`.
    """
    layers = decoder_layers(model)
    if site.layer >= len(layers):
        raise SparseEncoderError(
            f"hook site {site}: layer {site.layer} does not exist (model has layers 0..{len(layers) - 1})"
        )
    block = layers[site.layer]
    if site.site == "resid_pre":
        return block, "pre"
    if site.site == "resid_post":
        return block, "post"
    if site.site == "resid_mid":
        # Gemma2's post_attention_layernorm normalises the attention output; pre_feedforward_layernorm feeds the MLP.
        for name in ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2"):
            if getattr(block, name, None) is not None:
                return getattr(block, name), "pre"
        raise SparseEncoderError(f"hook site {site}: cannot find the pre-MLP norm of {type(block).__name__}")
    mlp = getattr(block, "mlp", None)
    if mlp is None:
        raise SparseEncoderError(f"hook site {site}: {type(block).__name__} has no `mlp` module")
    if site.site == "mlp_in":
        return mlp, "pre"
    post_norm = getattr(block, "post_feedforward_layernorm", None)  # Gemma2 normalises the MLP output before adding it
    return (post_norm, "post") if post_norm is not None else (mlp, "post")


def hooked_tensor(side: str, args: tuple, kwargs: dict | None = None, output: Any = None) -> Tensor:
    """The hidden-state tensor a hook sees on `side` ("pre": first argument or `hidden_states=`; "post": output)."""
    if side == "pre":
        if args:
            return args[0]
        if kwargs and "hidden_states" in kwargs:
            return kwargs["hidden_states"]
        raise ValueError("hooked module received no positional input and no hidden_states keyword")
    return output[0] if isinstance(output, (tuple, list)) else output
