"""SAE / transcoder loading: small random encoders saved in the sae-lens and sparsify layouts.

Each encode is checked against a formula written out here by hand; hook sites are checked on real
tiny models by the identities that tie them together (resid_post = resid_mid + mlp_out, ...).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from neuroscribe.saes import (
    HookSite,
    SparseEncoderError,
    check_compatible,
    hooked_tensor,
    load_sparse_encoder,
    resolve_hook_module,
)

D_IN, D_SAE = 64, 96


def _weights(seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


def write_sae_lens(folder, cfg: dict, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    base = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_name": "blocks.1.hook_resid_post",
        "hook_layer": 1,
        "architecture": "standard",
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "dtype": "float32",
    }
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return str(folder)


def write_sparsify(folder, cfg: dict, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "num_latents": D_SAE, "k": 8, **cfg}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae.safetensors"))
    return str(folder)


def sparsify_tensors(w: dict) -> dict:
    return {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}


@pytest.fixture
def x():
    return torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- sae-lens layout


def test_standard_relu_matches_formula_and_returns_float32(tmp_path, x):
    w = _weights()
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {}, w))
    assert (enc.kind, enc.site, enc.d_in, enc.d_latent) == ("sae", HookSite(1, "resid_post"), D_IN, D_SAE)
    out = enc.encode(x.to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.shape == (3, 5, D_SAE)
    expected = torch.relu((x.to(torch.bfloat16).float() - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(out, expected)
    assert 0 < (out > 0).float().mean() < 1


def test_apply_b_dec_to_input_false_skips_the_subtraction(tmp_path, x):
    w = _weights()
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"apply_b_dec_to_input": False}, w))
    torch.testing.assert_close(enc.encode(x), torch.relu(x @ w["W_enc"] + w["b_enc"]))


def test_jumprelu_threshold_zeroes_activations_at_or_below_it(tmp_path, x):
    w = {**_weights(), "threshold": torch.full((D_SAE,), 0.3)}
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"architecture": "jumprelu"}, w))
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    out = enc.encode(x)
    between = (pre > 0) & (pre <= 0.3)
    assert between.any() and (pre > 0.3).any()  # the test has cases on both sides of the threshold
    assert (out[between] == 0).all()
    torch.testing.assert_close(out[pre > 0.3], pre[pre > 0.3])
    assert (out[pre <= 0] == 0).all()


@pytest.mark.parametrize(
    "cfg",
    [
        {"architecture": "topk", "k": 7},  # sae-lens 6.x
        {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 7}},
    ],  # pre-6.0
    ids=["v6", "pre6"],
)
def test_topk_keeps_exactly_k_largest(tmp_path, x, cfg):
    w = _weights()
    w["b_enc"] = w["b_enc"] + 5.0  # every pre-activation positive, so exactly k survive the ReLU
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", cfg, w))
    out = enc.encode(x)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    assert ((out != 0).sum(-1) == 7).all()
    kth = pre.topk(7, dim=-1).values[..., -1:]
    torch.testing.assert_close(out, torch.where(pre >= kth, pre, torch.zeros_like(pre)))


def test_topk_with_negative_preactivations_keeps_at_most_k(tmp_path, x):
    w = _weights()
    w["b_enc"] = w["b_enc"] - 3.0
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"architecture": "topk", "k": 7}, w))
    out = enc.encode(x)
    assert ((out > 0).sum(-1) <= 7).all() and (out >= 0).all()


def test_sae_lens_transcoder_reads_mlp_input_and_never_subtracts_b_dec(tmp_path, x):
    w = _weights()
    w["W_dec"], w["b_dec"] = torch.randn(D_SAE, 48), torch.randn(48)  # output width differs from d_in
    cfg = {
        "architecture": "transcoder",
        "hook_name": "blocks.0.ln2.hook_normalized",
        "d_out": 48,
        "hook_name_out": "blocks.0.hook_mlp_out",
    }
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "tc", cfg, w))
    assert enc.kind == "transcoder" and enc.site == HookSite(0, "mlp_in")
    torch.testing.assert_close(enc.encode(x), torch.relu(x @ w["W_enc"] + w["b_enc"]))


def test_v6_config_keeps_hook_name_in_metadata(tmp_path):
    cfg = {
        "hook_name": None,
        "hook_layer": None,
        "metadata": {"hook_name": "blocks.0.hook_mlp_in", "sae_lens_version": "6.5.0"},
        "activation_fn_str": None,
    }
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", cfg, _weights()))
    assert enc.site == HookSite(0, "resid_mid")  # TransformerLens' hook_mlp_in is taken before ln2


def test_constant_norm_rescale_matches_sae_lens_formula(tmp_path, x):
    w = _weights()
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"normalize_activations": "constant_norm_rescale"}, w))
    scaled = x * D_IN**0.5 / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(enc.encode(x), torch.relu((scaled - w["b_dec"]) @ w["W_enc"] + w["b_enc"]))


def test_layer_and_site_override_the_config(tmp_path):
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {}, _weights()), layer=0, site="mlp_out")
    assert enc.site == HookSite(0, "mlp_out")


# ---------------------------------------------------------------- sparsify layout


def test_sparsify_sae_subtracts_b_dec_then_relu_topk(tmp_path, x):
    w = _weights()
    w["b_enc"] = w["b_enc"] + 5.0
    enc = load_sparse_encoder(write_sparsify(tmp_path / "layers.1", {}, sparsify_tensors(w)))
    assert (enc.kind, enc.site, enc.k) == ("sae", HookSite(1, "resid_post"), 8)
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    out = enc.encode(x.half())
    assert out.dtype == torch.float32 and ((out != 0).sum(-1) == 8).all()
    pre_half = torch.relu((x.half().float() - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    kth = pre_half.topk(8, dim=-1).values[..., -1:]
    torch.testing.assert_close(out, torch.where(pre_half >= kth, pre_half, torch.zeros_like(pre)))


def test_sparsify_transcoder_on_mlp_reads_its_input_without_b_dec(tmp_path, x):
    w = _weights()
    enc = load_sparse_encoder(write_sparsify(tmp_path / "layers.0.mlp", {"transcode": True}, sparsify_tensors(w)))
    assert enc.kind == "transcoder" and enc.site == HookSite(0, "mlp_in")
    pre = torch.relu(x @ w["W_enc"] + w["b_enc"])
    kth = pre.topk(8, dim=-1).values[..., -1:]
    torch.testing.assert_close(enc.encode(x), torch.where((pre >= kth) & (pre > 0), pre, torch.zeros_like(pre)))


def test_sparsify_sae_on_mlp_reads_its_output_and_expansion_factor_sets_width(tmp_path):
    w = _weights(d_sae=2 * D_IN)
    folder = write_sparsify(tmp_path / "layers.1.mlp", {"num_latents": 0, "expansion_factor": 2}, sparsify_tensors(w))
    enc = load_sparse_encoder(folder)
    assert enc.site == HookSite(1, "mlp_out") and enc.d_latent == 2 * D_IN


def test_sparsify_groupmax_keeps_one_per_group(tmp_path, x):
    w = _weights()
    w["b_enc"] = w["b_enc"] + 5.0
    enc = load_sparse_encoder(write_sparsify(tmp_path / "layers.0", {"activation": "groupmax"}, sparsify_tensors(w)))
    out = enc.encode(x).unflatten(-1, (8, -1))
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).unflatten(-1, (8, -1))
    assert ((out != 0).sum(-1) == 1).all()
    torch.testing.assert_close(out.max(-1).values, pre.max(-1).values)


def test_renamed_sparsify_folder_needs_layer_and_site(tmp_path):
    folder = write_sparsify(tmp_path / "my_sae", {}, sparsify_tensors(_weights()))
    with pytest.raises(SparseEncoderError, match="pass layer= and site="):
        load_sparse_encoder(folder)
    assert load_sparse_encoder(folder, layer=1, site="resid_pre").site == HookSite(1, "resid_pre")


# ---------------------------------------------------------------- bad input


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(SparseEncoderError, match="does not exist"):
        load_sparse_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseEncoderError, match="sae_weights.safetensors.*sae.safetensors"):
        load_sparse_encoder(tmp_path / "empty")
    folder = write_sae_lens(tmp_path / "sae", {}, _weights())
    (tmp_path / "sae" / "cfg.json").unlink()
    with pytest.raises(SparseEncoderError, match=r"cfg\.json is missing"):
        load_sparse_encoder(folder)


def test_invalid_json_names_the_file(tmp_path):
    folder = write_sae_lens(tmp_path / "sae", {}, _weights())
    (tmp_path / "sae" / "cfg.json").write_text("{not json")
    with pytest.raises(SparseEncoderError, match=r"cfg\.json: not valid JSON"):
        load_sparse_encoder(folder)


def test_missing_tensor_names_file_and_tensor(tmp_path):
    w = _weights()
    del w["b_enc"]
    with pytest.raises(SparseEncoderError, match=r"sae_weights\.safetensors: tensor 'b_enc' is missing"):
        load_sparse_encoder(write_sae_lens(tmp_path / "sae", {}, w))


def test_jumprelu_without_threshold_is_refused(tmp_path):
    with pytest.raises(SparseEncoderError, match="'threshold' is missing"):
        load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"architecture": "jumprelu"}, _weights()))


def test_transposed_w_enc_is_a_shape_error(tmp_path):
    w = _weights()
    w["W_enc"] = w["W_enc"].T
    with pytest.raises(SparseEncoderError, match=r"'W_enc' has shape \[96, 64\], expected \[64, 96\]"):
        load_sparse_encoder(write_sae_lens(tmp_path / "sae", {}, w))


def test_sparsify_wrong_decoder_shape(tmp_path):
    t = sparsify_tensors(_weights())
    t["W_dec"] = t["W_dec"][:, :10]
    with pytest.raises(SparseEncoderError, match=r"sae\.safetensors: tensor 'W_dec' has shape"):
        load_sparse_encoder(write_sparsify(tmp_path / "layers.0", {}, t))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"architecture": "topk"}, "field 'k' is missing"),
        ({"architecture": "topk", "k": 500}, "'k' = 500 must be between"),
        ({"activation_fn_str": "tanh-relu"}, "activation_fn 'tanh-relu'"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
        ({"d_in": None}, "field 'd_in' must be"),
        ({"hook_name": "blocks.1.attn.hook_z"}, "hook_name 'blocks.1.attn.hook_z' is not a supported hook"),
    ],
)
def test_bad_sae_lens_config_names_the_field(tmp_path, cfg, message):
    with pytest.raises(SparseEncoderError, match=message) as err:
        load_sparse_encoder(write_sae_lens(tmp_path / "sae", cfg, _weights()))
    assert "cfg.json" in str(err.value)


def test_bad_sparsify_activation(tmp_path):
    with pytest.raises(SparseEncoderError, match="activation 'softmax'"):
        load_sparse_encoder(
            write_sparsify(tmp_path / "layers.0", {"activation": "softmax"}, sparsify_tensors(_weights()))
        )


def test_encode_rejects_wrong_width(tmp_path):
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {}, _weights()))
    with pytest.raises(ValueError, match="d_in=64"):
        enc.encode(torch.zeros(2, 32))


def test_bad_hook_site():
    with pytest.raises(ValueError, match="not one of"):
        HookSite(0, "attn_out")


# ---------------------------------------------------------------- the subject model


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()


def test_check_compatible_against_tiny_llama(tmp_path, llama):
    check_compatible(load_sparse_encoder(write_sae_lens(tmp_path / "ok", {}, _weights())), llama)
    narrow = _weights(d_in=32)
    with pytest.raises(SparseEncoderError, match="d_in = 32 does not match the model's hidden size 64"):
        check_compatible(load_sparse_encoder(write_sae_lens(tmp_path / "narrow", {"d_in": 32}, narrow)), llama)
    deep = load_sparse_encoder(write_sae_lens(tmp_path / "deep", {"hook_name": "blocks.5.hook_resid_post"}, _weights()))
    with pytest.raises(SparseEncoderError, match="layer 5 does not exist"):
        check_compatible(deep, llama)


def _capture(model, ids, sites: list[HookSite]) -> dict[HookSite, torch.Tensor]:
    seen, handles = {}, []
    for s in sites:
        module, side = resolve_hook_module(model, s)

        def hook(mod, args, kwargs, output=None, s=s, side=side):
            seen[s] = hooked_tensor(side, args, kwargs, output).detach().clone()

        if side == "pre":
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_hook_sites_fit_together(tmp_path_factory, tiny_tokenizer_dir, family):
    from builders import build_tiny_model
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path_factory.mktemp(family), family, tokenizer_dir=tiny_tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    sites = [
        HookSite(layer, s) for layer in (0, 1) for s in ("resid_pre", "resid_mid", "resid_post", "mlp_in", "mlp_out")
    ]
    got = _capture(model, torch.arange(10, 22)[None], sites)
    for layer in (0, 1):
        S = lambda s, layer=layer: got[HookSite(layer, s)]  # noqa: E731
        assert S("resid_pre").shape == (1, 12, 64)
        torch.testing.assert_close(S("resid_mid") + S("mlp_out"), S("resid_post"))
        assert not torch.allclose(S("resid_mid"), S("mlp_in"))  # the pre-MLP norm sits between them
    torch.testing.assert_close(got[HookSite(0, "resid_post")], got[HookSite(1, "resid_pre")])
    with pytest.raises(SparseEncoderError, match="layer 2 does not exist"):
        resolve_hook_module(model, HookSite(2, "resid_post"))


def test_encoder_runs_on_a_hooked_tensor(tmp_path, llama):
    enc = load_sparse_encoder(write_sae_lens(tmp_path / "sae", {"hook_name": "blocks.0.hook_mlp_out"}, _weights()))
    hidden = _capture(llama, torch.arange(3, 11)[None], [enc.site])[enc.site]
    assert enc.encode(hidden).shape == (1, 8, D_SAE)
