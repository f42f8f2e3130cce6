"""Output-side descriptions: the logit lens and token change find what a feature writes, collect stores
them, and the output prompt styles show them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from neuroscribe.distill.collect.finalize import TokenText
from neuroscribe.distill.collect.outputs import token_label
from neuroscribe.features import FeatureGroup
from neuroscribe.models import load_model
from neuroscribe.output_side import feature_writer, logit_lens, token_change
from neuroscribe.prompts import explainer_messages
from neuroscribe.runs.store import OUTPUTS, ExemplarStore


def _plant_token(model, layer: int, neuron: int, token: int, size: float = 8.0) -> None:
    """Make MLP neuron `neuron` of `layer` write the unembedding row of `token` (scaled)."""
    head = model.get_output_embeddings().weight.detach()
    proj = model.model.layers[layer].mlp.down_proj
    with torch.no_grad():
        proj.weight[:, neuron] = size * head[token] / head[token].norm()


def test_a_neuron_that_writes_a_token_promotes_it_and_raises_its_probability(tiny_llama):
    model, tok = load_model(str(tiny_llama))
    target = 137
    _plant_token(model, 1, 3, target)
    group = FeatureGroup("mlp", 1, (3, 5), (1, -1))
    writer = feature_writer(model, group)
    assert writer.steer.shape[0] == writer.lens.shape[0] == 4  # 2 neurons x 2 polarities, polarity-major
    promoted, suppressed = logit_lens(model, writer, 5)
    assert promoted[0, 0] == target  # neuron 3, + polarity
    assert suppressed[2, 0] == target  # neuron 3, - polarity: the direction flips
    assert target not in promoted[1].tolist()  # neuron 5 writes something else
    raised, lowered = token_change(model, tok, writer, [40.0] * 4, 5)
    assert raised[0, 0] == target
    assert lowered[2, 0] == target
    # the hook is gone afterwards: the unsteered model still gives the same logits
    ids = torch.tensor([tok("hello there")["input_ids"]])
    before = model(input_ids=ids).logits
    token_change(model, tok, writer, [40.0] * 4, 5)
    assert torch.equal(model(input_ids=ids).logits, before)


def test_collect_output_side_reaches_the_store_and_the_output_prompt_styles(tiny_llama, tmp_path):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "neuroscribe.cli", "collect", "--model", str(tiny_llama), "--features", "mlp:1:0-3"]
    cmd += ["--window", "16", "--max-windows", "48", "--output-side", "--output-tokens", "4", "--no-progress"]
    res = subprocess.run(
        [*cmd, "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / OUTPUTS).exists()
    store = ExemplarStore(out)
    rec = store.get(store.keys()[0])
    side = rec.output
    assert side is not None
    assert all(len(getattr(side, n)) == 4 for n in ("promoted", "suppressed", "raised", "lowered"))
    model, tok = load_model(str(tiny_llama))
    writer = feature_writer(model, FeatureGroup("mlp", 1, (rec.feature.index,), (rec.feature.polarity,)))
    first = logit_lens(model, writer, 1)[0][0, 0].item()
    assert side.promoted[0] == token_label(TokenText(tok), first) and side.promoted[0]

    both = explainer_messages(rec, "input+output", max_exemplars=3)[1]["content"]
    alone = explainer_messages(rec, "output")[1]["content"]
    assert "marked <<like this>>" in both and "promotes" in both
    assert "promotes" in alone and "<<" not in alone  # no exemplar text at all
    assert f'"{side.raised[0]}"' in alone or side.raised[0].isspace()


def test_output_styles_on_a_store_without_output_side_say_how_to_get_it(tiny_llama, tmp_path):
    from neuroscribe.distill.collect import CollectConfig, collect

    store = ExemplarStore(
        collect(
            CollectConfig(
                out=str(tmp_path / "s"),
                model=str(tiny_llama),
                features=("mlp:0:0-1",),
                window=16,
                max_windows=32,
                progress=False,
            )
        )
    )
    assert not (tmp_path / "s" / OUTPUTS).exists()
    rec = store.get(store.keys()[0])
    with pytest.raises(ValueError, match="--output-side"):
        explainer_messages(rec, "output")


def test_an_ica_direction_whose_mixing_column_points_at_a_token_the_logit_lens_and_steering_name_it(
    tiny_llama, tmp_path
):
    """The direction a feature writes is ICA's mixing column, not the unmixing row it is read along."""
    from neuroscribe.bases import BasisSpec, LinearBasis

    model, tok = load_model(str(tiny_llama))
    head = model.get_output_embeddings().weight.detach().float()
    target, other = 137, 201
    e = head[target] / head[target].norm()
    u = head[other] - (head[other] @ e) * e
    u = u / u.norm()
    mixing = torch.stack([e, e - 0.2 * u])  # rows: what one unit of each feature writes
    unmixing = torch.linalg.pinv(mixing.T)  # rows read the features back: unmixing @ mixing.T = I
    unmixing = unmixing / unmixing.norm(dim=1, keepdim=True)
    assert (unmixing[0] @ u) > 0.9  # read along (almost) the other token's direction
    path = LinearBasis(BasisSpec("ica", 1, "resid_post", 2), unmixing, torch.zeros(e.shape[0])).save(
        tmp_path / "ica.safetensors"
    )
    writer = feature_writer(model, FeatureGroup("ica", 1, (0,), (1,), encoder_path=str(path)))
    assert torch.allclose(writer.lens[0] / writer.lens[0].norm(), e, atol=1e-4)
    promoted, _ = logit_lens(model, writer, 3)
    assert promoted[0, 0] == target
    raised, _ = token_change(model, tok, writer, [60.0], 3)
    assert raised[0, 0] == target


class _ToyLM(torch.nn.Module):
    """Logits = fixed bias + what a hook adds at `site` (a [d] -> [V] identity read-out): token 0 already
    likely, token 1 rare; the toy steer raises token 0's logit by 0.3 and token 1's by 3."""

    def __init__(self, vocab: int = 6):
        super().__init__()
        self.site = torch.nn.Identity()
        self.bias = torch.nn.Parameter(torch.tensor([4.0, -2.0] + [2.0] * (vocab - 2)))

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        zeros = torch.zeros(*input_ids.shape, self.bias.shape[0])
        return SimpleNamespace(logits=self.bias + self.site(zeros))


class _ToyTok:
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + len(w) % 4 for w in text.split()] or [1]}


def test_token_change_ranks_by_log_probability_change_not_probability_change():
    from neuroscribe.output_side import Writer

    model = _ToyLM()
    steer = torch.zeros(1, 6)
    steer[0, 0], steer[0, 1] = 0.3, 3.0
    writer = Writer(model.site, "post", steer, steer)
    probs = model.bias.detach().softmax(0)
    after = (model.bias.detach() + steer[0]).softmax(0)
    assert after[0] - probs[0] > after[1] - probs[1]  # in probability, the already-likely token gains more
    raised, _ = token_change(model, _ToyTok(), writer, [1.0], 1, prompts=("a b", "c"))
    assert raised[0, 0] == 1  # in log-probability (the paper's TokenChange), the rare token rises most
