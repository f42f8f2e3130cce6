"""A distilled dataset folder as a Hub dataset repository: the splits' schemas, the card, push."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Features, List, Value
from huggingface_hub import DatasetCard, DatasetCardData

from neuroscribe.runs.datasets import DatasetBuild

_MESSAGES = List({"role": Value("string"), "content": Value("string")})
_COMMON = {"feature": Value("string")}
_SFT_META = {"variant": Value("int32"), "score": Value("float64"), "explainer": Value("string")}
# Explicit schemas: a split's columns never depend on what its first row happened to hold.
FEATURES = {
    "sft": Features({**_COMMON, **_SFT_META, "prompt": _MESSAGES, "completion": _MESSAGES}),
    "chat": Features({**_COMMON, **_SFT_META, "messages": _MESSAGES}),
    "sft_control": Features(
        {**_COMMON, **_SFT_META, "prompt": _MESSAGES, "completion": _MESSAGES, "control_of": Value("string")}
    ),
    "preference": Features(
        {
            **_COMMON,
            "prompt": _MESSAGES,
            "chosen": _MESSAGES,
            "rejected": _MESSAGES,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
        }
    ),
}


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def dataset_card(info: DatasetBuild, files: dict[str, dict[str, str]]) -> DatasetCard:
    """A card with the provenance a reader needs to trust (or distrust) the labels."""
    meta, stats, cfg = info.meta, info.stats, info.config
    configs = [
        {"config_name": c, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}
        for c, splits in files.items()
    ]
    data = DatasetCardData(
        configs=configs,
        license="apache-2.0",
        language=["en"],
        pretty_name="neuroscribe explainer distillation",
        tags=["interpretability", "neuron-explanations", "neuroscribe", "sft", "dpo"],
        task_categories=["text-generation"],
    )
    rows = info.rows
    row_table = "\n".join(f"| {c} | {rows[c]['train']} | {rows[c]['validation']} |" for c in rows)
    score_rows = "\n".join(
        f"| {name} | {s['n']} | {_num(s['mean'])} | {_num(s['median'])} | {_num(s['min'])} | {_num(s['max'])} |"
        for name, s in (
            ("all parseable candidates", stats["candidate_score"]),
            ("best per feature", stats["best_score"]),
            ("SFT winners", stats["winner_score"]),
        )
    )
    body = f"""
# Explainer distillation data (neuroscribe)

Explanations of features of **{info.source_model}**, written by a teacher model (best of
{meta["k"]} candidates per feature) and scored by a simulator on held-out exemplars
(split `{meta["split"]}`). Built by `neuroscribe distill build`.

| | |
|---|---|
| source (subject) model | `{info.source_model}` |
| teacher | `{meta["teacher"]}` |
| simulator | `{meta["simulator"]}` |
| prompt | style `{meta["prompt_style"]}`, version `{meta["prompt_version"]}` |
| features | {stats["features"]} scored; train {len(info.splits["train"])}, validation {len(info.splits["validation"])}, held out {len(info.splits["heldout"])} |
| SFT threshold | score >= {cfg["threshold"]} ({stats["features_with_winner"]} features have a winner) |
| preference pairs | margin >= {cfg["min_margin"]}, at most {cfg["max_pairs_per_feature"]} per feature |
| augmentation | {cfg["augment"]} extra prompt variants per training feature ({cfg["augment_sizes"][0]}-{cfg["augment_sizes"][1]} of the top {cfg["augment_pool"]} exemplars, shuffled) |
| candidates | {stats["candidates"]} ({stats["unparseable"]} unparseable, {stats["nan_scores"]} NaN scores; neither is ever a winner) |

## Configurations

| config | train rows | validation rows |
|---|---|---|
{row_table}

- `sft`: conversational prompt / completion (completion-only loss in TRL).
- `chat`: the same rows as one `messages` list.
- `preference`: prompt / chosen / rejected, for DPO.
- `sft_control`: the `sft` rows with each feature's winner moved to another feature's prompt (`control_of`
  names it): a format-control student trained on it learns the winners' form without their content.

Splits are drawn by feature. `heldout.txt` lists features reserved for evaluation; no split of
this dataset contains them. `build.json` holds every parameter and the exact feature lists.

## Scores (Pearson r of simulated vs true activations)

| set | n | mean | median | min | max |
|---|---|---|---|---|---|
{score_rows}

## Limitations

Labels are only as good as the teacher and the simulator: a weak simulator ranks candidates
noisily, and scores are measured on the `{meta["split"]}` split that also selected the winners,
so they are optimistic. Report quality on the held-out features' test split.
"""
    return DatasetCard("---\n" + data.to_yaml() + "\n---\n" + body)


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    api=None,
) -> str:
    """Upload a built dataset folder to a Hub dataset repo; returns the repo URL.

    `api` defaults to `huggingface_hub.HfApi`; offline (`HF_HUB_OFFLINE=1`) this fails before any upload.
    """
    from huggingface_hub import HfApi

    if os.environ.get("HF_HUB_OFFLINE") == "1" and api is None:
        raise ConnectionError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE=1 (no Hub reachable)")
    api = api or HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        revision=revision,
        commit_message="neuroscribe distill build",
    )
    return str(url)
