"""Control bases (random / PCA / ICA directions): the fitted directions, and collect storing each
direction's projection like any other feature, on a real tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_collect import SMALL

from neuroscribe.bases import BasisSpecError, fit_directions, load_basis, parse_basis_spec
from neuroscribe.configs import CollectConfig
from neuroscribe.distill.collect import collect
from neuroscribe.models import decoder_layers, down_proj_module, load_model
from neuroscribe.records import FeatureId
from neuroscribe.runs.store import ExemplarStore


def _samples(n=400, d=12, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sources = rng.laplace(size=(n, d))  # non-Gaussian, so ICA has something to find
    mixing = rng.standard_normal((d, d)) * np.linspace(3, 0.3, d)
    x = sources @ mixing.T
    return x - x.mean(axis=0)


@pytest.mark.parametrize("kind", ["random", "pca", "ica"])
def test_directions_are_unit_length_and_pca_and_random_orthonormal(kind):
    w = fit_directions(kind, _samples(), 5, seed=1)
    assert w.shape == (5, 12)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)
    if kind != "ica":
        assert np.allclose(w @ w.T, np.eye(5), atol=1e-5)


def test_pca_finds_the_top_singular_direction_and_random_depends_on_the_seed():
    x = _samples()
    top = np.linalg.svd(x, full_matrices=False)[2][0]
    assert abs(float(fit_directions("pca", x, 3)[0] @ top)) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(fit_directions("random", x, 3, seed=1), fit_directions("random", x, 3, seed=2))
    with pytest.raises(BasisSpecError, match="only 12 dimensions"):
        fit_directions("pca", x, 13)


def test_spec_errors_name_the_item():
    assert parse_basis_spec("ica:3.resid_post:8").site == "resid_post"
    assert parse_basis_spec("pca:3:8").site == "mlp_hidden"
    with pytest.raises(BasisSpecError, match=r"'pca:3'.*KIND:LAYER\[.SITE\]:N"):
        parse_basis_spec("pca:3")
    with pytest.raises(BasisSpecError, match="site 'nowhere'"):
        parse_basis_spec("pca:3.nowhere:8")


def test_collect_stores_each_direction_as_the_projection_of_the_hook_activation(tiny_llama, tmp_path):
    cfg = CollectConfig(
        out=str(tmp_path / "store"),
        model=str(tiny_llama),
        features=("mlp:0:0-3;pca:0:4;random:0:4;ica:0.resid_post:3",),
        window=16,
        max_windows=64,
        batch_size=8,
        shard_windows=64,
        mining=SMALL,
        basis_fit_windows=32,
        context=0,  # windows read alone, so one exemplar is recomputed from its own tokens below
        progress=False,
    )
    store = ExemplarStore(collect(cfg))
    kinds = {k.split("/")[0] for k in store.keys(include_dead=True)}
    assert kinds == {"mlp", "pca", "random", "ica"}
    assert {"pca/L0/0+", "pca/L0/0-", "random/L0/3+", "ica/L0/2-"} <= set(store.keys(include_dead=True))
    assert FeatureId.parse("ica/L0/2-") == FeatureId("ica", 0, 2, -1)  # every later stage parses these keys
    bases = sorted(p.name for p in (tmp_path / "store" / "bases").iterdir())
    assert bases == [
        "ica-L0-resid_post-3.safetensors",
        "pca-L0-mlp_hidden-4.safetensors",
        "random-L0-mlp_hidden-4.safetensors",
    ]
    assert any(
        g["kind"] == "pca" and g["encoder_path"].endswith("pca-L0-mlp_hidden-4.safetensors")
        for g in store.meta["groups"]
    )

    # the top exemplar of each sign of pca/L0/1, recomputed by hand from the MLP hidden activation
    basis = load_basis(tmp_path / "store" / "bases" / "pca-L0-mlp_hidden-4.safetensors")
    model, _ = load_model(str(tiny_llama))
    prefix = store.meta["context_prefix_ids"]

    def projection(token_ids) -> np.ndarray:
        seen = []
        handle = down_proj_module(decoder_layers(model)[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([prefix + list(token_ids)]), use_cache=False)
        handle.remove()
        hidden = seen[0][0, len(prefix) :].float()
        return ((hidden - basis.mean) @ basis.directions[1]).numpy()

    for key, sign in (("pca/L0/1+", 1), ("pca/L0/1-", -1)):
        ex = store.get(key).exemplars[0]
        assert np.allclose(ex.activations, sign * projection(ex.token_ids), atol=1e-4), key


def test_a_fitted_basis_writes_its_mixing_columns_and_reads_them_back_as_unit_vectors():
    from sklearn.decomposition import FastICA

    from neuroscribe.bases import BasisSpec, LinearBasis

    samples = _samples()
    samples = samples - samples.mean(0)
    rows = fit_directions("ica", samples, 4)
    basis = LinearBasis(BasisSpec("ica", 0, "mlp_hidden", 4), torch.from_numpy(rows).float(), torch.zeros(12))
    ica = FastICA(n_components=4, whiten="unit-variance", random_state=0, max_iter=400, tol=1e-3).fit(samples)
    mixing = torch.from_numpy(ica.mixing_.T).float()  # [4, d]: what each source writes
    cos = torch.nn.functional.cosine_similarity(basis.writes, mixing, dim=1)
    assert torch.allclose(cos, torch.ones(4), atol=1e-4)
    assert torch.allclose(basis.encode(basis.writes), torch.eye(4), atol=1e-4)
    assert cos.min() > 0.999 and torch.nn.functional.cosine_similarity(basis.directions, mixing, dim=1).min() < 0.99
    pca = LinearBasis(
        BasisSpec("pca", 0, "mlp_hidden", 4),
        torch.from_numpy(fit_directions("pca", samples, 4)).float(),
        torch.zeros(12),
    )
    assert torch.allclose(pca.writes, pca.directions, atol=1e-5)  # orthonormal: reads and writes alike


def _hidden(model, ids) -> torch.Tensor:
    seen = []
    handle = down_proj_module(decoder_layers(model)[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return seen[0].float()


def test_the_fit_leaves_out_the_prefix_and_context_positions(tiny_llama):
    from neuroscribe.bases import BasisSpec, fit_basis

    model, _ = load_model(str(tiny_llama))
    ids = torch.randint(5, 400, (6, 12), generator=torch.Generator().manual_seed(0))
    basis = fit_basis(BasisSpec("pca", 0, "mlp_hidden", 4), model, [ids], skip=4)
    hidden = _hidden(model, ids)
    assert torch.allclose(basis.mean, hidden[:, 4:].reshape(-1, hidden.shape[-1]).mean(0), atol=1e-5)
    assert not torch.allclose(basis.mean, hidden.reshape(-1, hidden.shape[-1]).mean(0), atol=1e-4)


def test_centring_is_an_explicit_choice_of_the_spec_and_the_file(tiny_llama, tmp_path):
    from neuroscribe.bases import fit_basis

    spec = parse_basis_spec("pca:0:4:uncentred")
    assert not spec.centred and spec.file_name == "pca-L0-mlp_hidden-4-uncentred.safetensors"
    assert parse_basis_spec("pca:0:4").centred
    model, _ = load_model(str(tiny_llama))
    ids = torch.randint(5, 400, (6, 12), generator=torch.Generator().manual_seed(0))
    basis = fit_basis(spec, model, [ids])
    centred = fit_basis(parse_basis_spec("pca:0:4"), model, [ids])
    assert torch.allclose(basis.directions, centred.directions)  # the same directions, read differently
    x = _hidden(model, ids)[0]
    assert torch.allclose(basis.encode(x), x @ basis.directions.T, atol=1e-5)  # x . w, like a neuron
    assert torch.allclose(centred.encode(x), (x - centred.mean) @ centred.directions.T, atol=1e-5)
    loaded = load_basis(basis.save(tmp_path / spec.file_name))
    assert not loaded.spec.centred and torch.equal(loaded.mean, torch.zeros_like(loaded.mean))


def test_the_bases_benchmark_reports_each_basis_minus_its_own_null():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "bases.py"
    spec = importlib.util.spec_from_file_location("bench_bases", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.basis_row([0.5, 0.3, 0.4], [0.4, 0.1, 0.4])
    assert row["mean"] == pytest.approx(0.4) and row["null"] == pytest.approx(0.3)
    assert row["minus_null"] == pytest.approx(0.1) and row["minus_null_low"] <= 0.1 <= row["minus_null_high"]
