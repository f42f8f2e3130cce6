"""`neuroscribe publish`: a training run folder -> a Hub model repository (or that folder only).

The repository folder holds the LoRA adapter (or, with `merge`, the base with the adapter merged
in; or the full weights of a full fine-tune), the tokenizer, a hand-written model card, the recipe
YAML and the run facts. Files are copied from an allow-list, so optimizer states and
`training_args.bin` (a pickle that can hold a hub token) never leave the machine; a last scan
refuses to publish any text that looks like a token.

Upload: `HfApi.create_repo` + `create_branch` + `upload_folder` to one branch. A branch that already
holds files (beyond .gitattributes) is not overwritten unless `overwrite` is set; then the upload
replaces its contents.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.configs import PublishConfig
from neuroscribe.models import DTYPES, load_model
from neuroscribe.options import to_dict
from neuroscribe.runs.files import building_folder, guard_output, refuse_nonempty, replace_folder, sibling_lock
from neuroscribe.runs.simulator import SIMULATOR_FILE
from neuroscribe.runs.train import has_adapter, read_run_info, set_adapter_base, write_recipe, write_run_info
from neuroscribe.train.args import redacted_recipe_text
from neuroscribe.train.cards import eval_table, model_card
from neuroscribe.train.simulator import simulator_card

PUBLISHED = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "all_results.json",
    "simulator.json",
)
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|\bsk-[A-Za-z0-9_-]{20,}\b")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "WANDB_API_KEY")


@dataclass(frozen=True)
class PublishResult:
    folder: Path
    files: tuple[str, ...]
    repo_id: str | None = None
    branch: str | None = None
    url: str | None = None


def build_repo_folder(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    merge: bool = False,
    eval_results: str | Path | None = None,
    recipe: str | Path | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the repository folder for `run_dir` into `out_dir` (refuses a non-empty one unless overwrite)."""
    run, out = Path(run_dir), Path(out_dir)
    guard_output(out, {"run_dir": run, "recipe": recipe, "eval_results": eval_results})
    info = read_run_info(run)
    is_adapter = has_adapter(run)
    if merge and not is_adapter:
        raise ValueError(f"{run}: --merge applies to LoRA runs; this run holds full weights already")
    with sibling_lock(out):
        refuse_nonempty(out, overwrite)
        with building_folder(out) as tmp:
            _fill_repo_folder(run, tmp, info, merge=merge, is_adapter=is_adapter, recipe=recipe)
            card = simulator_card if info.get("kind") == "simulator" else model_card
            card({**info, "merged": merge}, eval_table(eval_results), repo_id).save(tmp / "README.md")
            check_no_secrets(tmp)
        return replace_folder(tmp, out, overwrite)


def _fill_repo_folder(run: Path, tmp: Path, info: dict, *, merge: bool, is_adapter: bool, recipe) -> None:
    """Weights (merged or as trained), tokenizer, recipe and run facts from an allow-list, into `tmp`."""
    if merge:
        _write_merged(run, info, tmp)
        if (run / SIMULATOR_FILE).exists():  # a trained simulator's class ids travel with its weights
            shutil.copy2(run / SIMULATOR_FILE, tmp / SIMULATOR_FILE)
    else:
        for f in sorted(run.iterdir()):
            if f.is_file() and any(fnmatch.fnmatch(f.name, pat) for pat in PUBLISHED):
                shutil.copy2(f, tmp / f.name)
        if is_adapter:  # the adapter names its base as trained: a cache path for bundled models
            set_adapter_base(tmp, info["base_model"])
    recipe_path = Path(recipe) if recipe else run / "recipe.yaml"
    if recipe_path.exists():
        write_recipe(tmp, redacted_recipe_text(recipe_path))
    write_run_info(tmp, {**info, "merged": merge})


def _write_merged(run: Path, info: dict, folder: Path) -> None:
    from peft import PeftModel
    from transformers import AutoTokenizer

    dtype = info.get("dtype") if info.get("dtype") in DTYPES else "float32"  # "auto"/None: load as fp32
    base, _ = load_model(info.get("base_model_dir") or info["base_model"], dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(run)).merge_and_unload()
    merged.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(run)).save_pretrained(str(folder))


def check_no_secrets(folder: Path) -> None:
    """Refuse to publish text that holds a known secret's value or looks like a Hub / API token."""
    values = [os.environ[k] for k in TOKEN_ENV if len(os.environ.get(k, "")) >= 8]
    for f in folder.rglob("*"):
        if not f.is_file() or f.suffix in (".safetensors", ".bin", ".model"):
            continue
        text = f.read_text(errors="ignore")
        if TOKEN_PATTERN.search(text) or any(v in text for v in values):
            raise ValueError(f"{f}: looks like it contains a token; refusing to publish")


def upload(
    folder: Path,
    repo_id: str,
    branch: str = "main",
    *,
    overwrite: bool = False,
    private: bool = True,
    token: str | None = None,
    api=None,
    commit_message: str = "neuroscribe publish",
) -> str:
    """Create the repo and branch if needed, then upload `folder` to the branch; returns the commit URL."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    branches = {b.name for b in api.list_repo_refs(repo_id).branches}
    if branch in branches:
        existing = [f for f in api.list_repo_files(repo_id, revision=branch) if f != ".gitattributes"]
        if existing and not overwrite:
            raise FileExistsError(
                f"{repo_id}@{branch} already holds {len(existing)} file(s) "
                f"(e.g. {existing[0]}); pass --overwrite or choose another --branch"
            )
    else:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        revision=branch,
        commit_message=commit_message,
        delete_patterns="*" if overwrite else None,
    )
    return str(getattr(commit, "commit_url", commit))


def publish(
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    dry_run: str | Path | None = None,
    merge: bool = False,
    branch: str = "main",
    overwrite: bool = False,
    eval_results: str | Path | None = None,
    recipe: str | Path | None = None,
    private: bool = True,
    token: str | None = None,
    api=None,
) -> PublishResult:
    """Build the repository folder; with `dry_run` write it there and stop, else upload it to `repo_id@branch`."""
    import tempfile

    if dry_run is None and not repo_id:
        raise ValueError("publish needs a repo id (--repo) or --dry-run DIR")
    if dry_run is None and api is None and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConnectionError(f"cannot publish to {repo_id}: HF_HUB_OFFLINE=1 (no Hub reachable); use --dry-run DIR")
    kwargs = dict(merge=merge, eval_results=eval_results, recipe=recipe, repo_id=repo_id)
    if dry_run is not None:
        folder = build_repo_folder(run_dir, dry_run, overwrite=overwrite, **kwargs)
        return PublishResult(folder, _files(folder), repo_id)
    with tempfile.TemporaryDirectory(prefix="neuroscribe-publish-") as tmp:
        folder = build_repo_folder(run_dir, Path(tmp) / "repo", **kwargs)
        url = upload(folder, repo_id, branch, overwrite=overwrite, private=private, token=token, api=api)
        return PublishResult(Path(run_dir), _files(folder), repo_id, branch, url)


def _files(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))


def publish_command(cfg: PublishConfig, echo=print) -> PublishResult:
    """`neuroscribe publish`: prints what was written or uploaded (never the token, read from HF_TOKEN)."""
    options = {k: v for k, v in to_dict(cfg).items() if k not in ("run_dir", "repo")}  # the rest: publish's keywords
    result = publish(cfg.run_dir, cfg.repo, **options)
    where = f"{result.folder}" if cfg.dry_run is not None else f"{result.repo_id}@{result.branch} ({result.url})"
    echo(f"published {len(result.files)} files to {where}: {', '.join(result.files)}")
    return result
