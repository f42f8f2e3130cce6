"""Output side of a feature: what it does to the subject's next-token prediction.

Descriptions built from the inputs that activate a feature miss what it does to the output
(Gur-Arieh et al. 2025). Two views per feature, both from the subject model alone:
- **logit lens**: the feature's output direction `d` (what one unit of its activation adds to the
  residual stream: an MLP neuron's column of the output projection; an SAE/transcoder latent's
  decoder row; a control-basis direction's write vector, `bases.LinearBasis.writes` (ICA's mixing
  column, not the unmixing row it is read along), mapped through the output projection at `mlp_hidden`),
  times its polarity, read through the final norm's scale and the unembedding: `W_U (g * d)` (the
  norm's centring and variance are left out, as is usual). Promoted: the `k` largest logits;
  suppressed: the `k` smallest.
- **token change**: the subject reads `NEUTRAL_PROMPTS` twice, once as is and once with the feature
  amplified — `steer x max activation x d` added to the residual stream where the feature writes it,
  at every position. The score of a token is its **log-probability change**, `mean_logprob_change`:
  the mean over every position of every prompt of log p(steered) - log p(unsteered) (one definition,
  shared with `interventions`). TokenChange is about how far amplifying the feature raises a token's
  log-probability (equivalently its logit, up to the shared log-normaliser); a raw probability change
  would favour tokens that are already likely (0.50 -> 0.55 outranks 0.0001 -> 0.01). The `k` tokens
  that gain most, and the `k` that lose most.
Token texts are the subject's own pieces (`distill.collect.finalize.TokenText`, control tokens escaped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuroscribe.bases import BASIS_KINDS, DEFAULT_SITE, hook_point, load_basis
from neuroscribe.models import decoder_layers, down_proj_module
from neuroscribe.saes import HookSite, load_sparse_encoder, resolve_hook_module

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "The weather today is",
    "She opened the door and",
    "In the morning, we usually",
    "The most important thing to remember is",
    "He wrote a short note that said",
    "Here is a list of things:",
    "def main():\n    ",
    "The results of the study show that",
)


def _columns(proj: torch.nn.Module) -> torch.Tensor:
    """[d_hidden, d_model]: row i is what hidden unit i of an MLP adds to the residual stream per unit."""
    w = proj.weight.detach().float()
    return w.T if hasattr(proj, "in_features") else w  # nn.Linear stores [out, in]; GPT-2 Conv1D [in, out]


@dataclass(frozen=True)
class Writer:
    """Where a group of features acts: the hooked module and side where steering adds `steer` [F, d_site]
    (one unit of each feature, in that site's space), and `lens` [F, d_model], the same units in the
    residual stream (for the logit lens). Rows in the reader's order (polarity-major), polarity applied."""

    module: torch.nn.Module
    side: str
    steer: torch.Tensor
    lens: torch.Tensor


def feature_writer(model, group) -> Writer:
    """The output directions of a `features.FeatureGroup` (module doc)."""

    proj = down_proj_module(decoder_layers(model)[group.layer])
    idx = list(group.indices)
    if group.kind == "mlp":
        module, side = proj, "pre"
        columns = _columns(proj)
        steer = torch.zeros(len(idx), columns.shape[0])
        steer[torch.arange(len(idx)), idx] = 1.0  # one unit of the neuron itself
        lens = columns[idx]
    elif group.kind in BASIS_KINDS:
        basis = load_basis(group.encoder_path)
        module, side = hook_point(model, basis.spec.layer, basis.spec.site)
        steer = basis.writes[idx].float().cpu()  # the direction it writes (ICA: mixing column), not reads
        lens = steer @ _columns(proj).cpu() if basis.spec.site == DEFAULT_SITE else steer
    else:
        enc = load_sparse_encoder(group.encoder_path)
        site = HookSite(enc.site.layer, "mlp_out") if enc.kind == "transcoder" else enc.site
        module, side = resolve_hook_module(model, site)
        steer = lens = enc.W_dec.detach().float().cpu()[idx]
    device = next(model.parameters()).device
    signed = [torch.cat([x.to(device) * p for p in group.polarities], 0) for x in (steer, lens)]
    return Writer(module, side, *signed)


def _unembed(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings().weight.detach().float()  # [V, d]
    norm = getattr(getattr(model, "model", None), "norm", None) or getattr(
        getattr(model, "transformer", None), "ln_f", None
    )
    scale = norm.weight.detach().float() if norm is not None and getattr(norm, "weight", None) is not None else None
    return head, scale


@torch.no_grad()
def logit_lens(model, writer: Writer, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([F, k] promoted token ids, [F, k] suppressed ones) of the writer's residual directions (module doc)."""
    head, scale = _unembed(model)
    logits = (writer.lens.float() * (scale if scale is not None else 1.0)) @ head.T  # [F, V]
    return logits.topk(k, dim=1).indices, (-logits).topk(k, dim=1).indices


@contextlib.contextmanager
def added_to_output(writer: Writer, delta: torch.Tensor):
    """Add `delta` [d_site] at the writer's site, every position, while inside."""
    if writer.side == "pre":

        def pre(mod, args, kwargs):
            if args:
                return (args[0] + delta.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta.to(kwargs["hidden_states"].dtype)}

        handle = writer.module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(mod, args, out):
            if isinstance(out, tuple):
                return (out[0] + delta.to(out[0].dtype), *out[1:])
            return out + delta.to(out.dtype)

        handle = writer.module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def prompt_batch(tok, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask: a causal model's logits at real positions ignore the padding after them."""
    rows = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def steer_amount(steer: float, max_activation: float) -> float:
    """Units a feature is amplified by: `steer` x its max activation (x 1 for a feature that never fired)."""
    return steer * (max_activation or 1.0)


def mean_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[V] next-token log-probabilities averaged over every real position."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return (logits.log_softmax(-1) * (mask / mask.sum()).unsqueeze(-1).float()).sum((0, 1))


def mean_logprob_change(
    model, ids: torch.Tensor, mask: torch.Tensor, writer: Writer, delta: torch.Tensor, base: torch.Tensor | None = None
) -> torch.Tensor:
    """[V] the token change of the module doc: mean log p with `delta` added at the writer's site minus
    without (`base`: the unsteered `mean_logprobs`, when already computed)."""
    base = mean_logprobs(model, ids, mask) if base is None else base
    with added_to_output(writer, delta):
        return mean_logprobs(model, ids, mask) - base


@torch.no_grad()
def token_change(
    model, tok, writer: Writer, amounts: Sequence[float], k: int, prompts: Sequence[str] = NEUTRAL_PROMPTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """([F, k] token ids whose log-probability rises most, [F, k] that fall most) when feature f is amplified
    by `amounts[f]` units (module doc: `mean_logprob_change`)."""
    ids, mask = prompt_batch(tok, prompts, next(model.parameters()).device)
    base = mean_logprobs(model, ids, mask)
    raised, lowered = [], []
    for f in range(writer.steer.shape[0]):
        change = mean_logprob_change(model, ids, mask, writer, writer.steer[f] * float(amounts[f]), base)
        raised.append(change.topk(k).indices)
        lowered.append((-change).topk(k).indices)
    return torch.stack(raised), torch.stack(lowered)
