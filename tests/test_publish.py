"""publish: repo folder (adapter / merged / card / recipe), loading it back, branch-safe upload, no secrets.

There is no Hugging Face Hub here: upload tests use `HubDouble`, an in-memory stand-in for the few
`HfApi` methods we call. It checks every call against the real `HfApi` method signature, so a renamed
or misspelt argument fails here as it would against the Hub. Everything else is real: TRL training of
a tiny Llama, PEFT merging, transformers loading and generation.
"""

from __future__ import annotations

import inspect
import json
import secrets
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, GitRefInfo, GitRefs, RepoUrl
from test_datasets import distilled_dataset

from neuroscribe.configs import PublishConfig
from neuroscribe.train import sft
from neuroscribe.train.args import parse_args
from neuroscribe.train.publish import publish, publish_command

ROOT = Path(__file__).resolve().parents[1]


class HubDouble:
    """Repos -> branches -> {path: bytes}; records calls. A double of the Hub's HTTP API (see module doc)."""

    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.calls: list[tuple[str, dict]] = []

    def _check(self, name, *args, **kwargs):
        inspect.signature(getattr(HfApi, name)).bind(self, *args, **kwargs)  # TypeError on a wrong call
        self.calls.append((name, kwargs))

    def create_repo(self, repo_id, **kwargs):
        self._check("create_repo", repo_id, **kwargs)
        if repo_id in self.repos and not kwargs.get("exist_ok"):
            raise FileExistsError(repo_id)
        self.repos.setdefault(repo_id, {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def list_repo_refs(self, repo_id, **kwargs):
        self._check("list_repo_refs", repo_id, **kwargs)
        return GitRefs(
            branches=[GitRefInfo(name=b, ref=f"refs/heads/{b}", target_commit="0" * 40) for b in self.repos[repo_id]],
            converts=[],
            tags=[],
        )

    def list_repo_files(self, repo_id, **kwargs):
        self._check("list_repo_files", repo_id, **kwargs)
        return sorted(self.repos[repo_id][kwargs.get("revision") or "main"])

    def create_branch(self, repo_id, **kwargs):
        self._check("create_branch", repo_id, **kwargs)
        self.repos[repo_id].setdefault(kwargs["branch"], {".gitattributes": b""})

    def upload_folder(self, **kwargs):
        self._check("upload_folder", **kwargs)
        branch = self.repos[kwargs["repo_id"]][kwargs.get("revision") or "main"]
        if kwargs.get("delete_patterns") == "*":
            branch.clear()
        for f in Path(kwargs["folder_path"]).rglob("*"):
            if f.is_file():
                branch[str(f.relative_to(kwargs["folder_path"]))] = f.read_bytes()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1",
            commit_message="",
            commit_description="",
            oid="1" * 40,
        )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return distilled_dataset(tmp_path_factory.mktemp("distill"))


@pytest.fixture(scope="module")
def lora_run(tiny_llama, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sft"
    sft.main(
        *parse_args(
            "sft",
            [
                "--config",
                str(ROOT / "recipes/tiny/sft.yaml"),
                "--model_name_or_path",
                str(tiny_llama),
                "--dataset_name",
                str(data_dir),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--learning_rate",
                "0.05",
            ],
        )
    )
    return out


def generate(model, tok) -> str:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Explain."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_dry_run_adapter_folder_loads_back_and_generates(lora_run, tmp_path):
    from neuroscribe.models import load_model

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"heldout test": {"pooled r": 0.4321, "features": 3}}))
    res = publish(lora_run, dry_run=tmp_path / "repo", eval_results=results, repo_id="me/explainer")
    files = set(res.files)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "recipe.yaml"} <= files
    assert not any(f.endswith(("training_args.bin", ".pt")) or f.startswith("checkpoint") for f in files)
    card = ModelCard.load(tmp_path / "repo" / "README.md")
    assert card.data.library_name == "peft" and "0.4321" in card.text and "me/explainer" in card.text
    model, tok = load_model(str(tmp_path / "repo"))  # base named in adapter_config + the adapter, folded in
    base, _ = load_model(json.loads((tmp_path / "repo" / "adapter_config.json").read_text())["base_model_name_or_path"])
    ids = torch.tensor([tok("the adapter changes this")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits, atol=1e-6), "the adapter was applied"
    assert isinstance(generate(model, tok), str)


def test_merged_folder_matches_the_adapter_model(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuroscribe.models import load_model

    publish(lora_run, dry_run=tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    adapter, _ = load_model(str(lora_run))
    ids = tok("def f(x): return x", return_tensors="pt")
    with torch.no_grad():
        a, m = adapter(**ids).logits, merged(**ids).logits
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((lora_run / "neuroscribe_run.json").read_text())["base_model"]
    )
    with torch.no_grad():
        b = base(**ids).logits
    assert torch.allclose(a, m, atol=1e-4) and not torch.allclose(b, m, atol=1e-4)  # merged == base + adapter
    assert isinstance(generate(merged, tok), str)
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.library_name == "transformers"


def test_upload_goes_to_a_branch_and_refuses_to_overwrite_it(lora_run):
    hub = HubDouble()
    res = publish(lora_run, "me/explainer", branch="sft-v1", api=hub, private=True)
    assert res.url.endswith("/commit/1") and "README.md" in hub.repos["me/explainer"]["sft-v1"]
    assert set(hub.repos["me/explainer"]["main"]) == {".gitattributes"}
    with pytest.raises(FileExistsError, match="sft-v1"):
        publish(lora_run, "me/explainer", branch="sft-v1", api=hub)
    hub.repos["me/explainer"]["sft-v1"]["stale.bin"] = b"old"
    publish(lora_run, "me/explainer", branch="sft-v1", api=hub, overwrite=True)
    assert "stale.bin" not in hub.repos["me/explainer"]["sft-v1"]
    publish(lora_run, "me/explainer", api=hub)  # a fresh repo's main holds only .gitattributes
    assert "adapter_model.safetensors" in hub.repos["me/explainer"]["main"]
    assert [n for n, _ in hub.calls].count("create_branch") == 1


def test_push_without_a_hub_fails_fast(lora_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        publish(lora_run, "me/explainer")


def test_dataset_push_uses_the_hub_api(data_dir):
    from neuroscribe.distill.cards import push_dataset

    hub = HubDouble()
    url = push_dataset(data_dir, "me/explainer-data", api=hub)
    assert url == "https://huggingface.co/me/explainer-data"
    files = hub.repos["me/explainer-data"]["main"]
    assert {"README.md", "heldout.txt", "sft/train.parquet", "preference/train.parquet"} <= set(files)
    assert dict(hub.calls)["create_repo"]["repo_type"] == "dataset"


def test_tokens_never_reach_files_logs_or_cards(tiny_llama, data_dir, tmp_path, monkeypatch, capfd):
    token = "hf_" + secrets.token_hex(17)
    yaml_token = "hf_" + secrets.token_hex(17)
    monkeypatch.setenv("HF_TOKEN", "placeholder-restored-after-test")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        (ROOT / "recipes/tiny/sft.yaml").read_text() + f"hub_model_id: me/explainer\nhub_token: {yaml_token}\n"
    )
    out = tmp_path / "run"
    sft.main(
        *parse_args(
            "sft",
            [
                "--config",
                str(recipe),
                "--model_name_or_path",
                str(tiny_llama),
                "--dataset_name",
                str(data_dir),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--hub_token",
                token,
                "--log_level",
                "info",
            ],
        )
    )
    publish(out, dry_run=tmp_path / "repo")
    logs = "".join(capfd.readouterr())
    assert "rank 0 of 1" in logs  # the logs were captured
    for secret in (token, yaml_token):
        assert secret not in logs
        for f in [*out.rglob("*"), *(tmp_path / "repo").rglob("*")]:
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f
    assert "<redacted>" in (out / "recipe.yaml").read_text()


def test_a_token_in_a_recipe_comment_blocks_publishing(lora_run, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# pushed with hf_" + "a1" * 16 + "\nlearning_rate: 1.0e-3\n")
    with pytest.raises(ValueError, match="token"):
        publish(lora_run, dry_run=tmp_path / "repo", recipe=recipe)
    assert not (tmp_path / "repo").exists()


def test_publish_command_prints_what_it_wrote(lora_run, tmp_path):
    lines = []
    publish_command(PublishConfig(str(lora_run), dry_run=str(tmp_path / "repo")), echo=lines.append)
    assert lines[0].startswith("published ") and str(tmp_path / "repo") in lines[0] and "README.md" in lines[0]
    with pytest.raises(FileExistsError, match="not empty"):
        publish_command(PublishConfig(str(lora_run), dry_run=str(tmp_path / "repo")), echo=lines.append)
    shutil.rmtree(tmp_path / "repo")
