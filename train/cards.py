"""Model cards for trained explainers, written by hand: offline, TRL's automatic card has base model
"None" and PEFT placeholders. The card never holds a secret: it is built only from run facts."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from neuroscribe import markdown

# Bundled model names -> the Hub repository they were converted from (for card metadata).
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_id(spec: str | None) -> str | None:
    """A Hub id for card metadata, or None for a local path (the Hub rejects those in `base_model`)."""
    if not spec:
        return None
    if spec in HUB_IDS:
        return HUB_IDS[spec]
    if Path(spec).exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return None
    return spec


def eval_table(path: str | Path | None) -> str | None:
    """A markdown table from a `.md` file (used as is) or a results `.json`.

    JSON: {metric: value}, {row: {metric: value}} or [{column: value}, ...].
    """
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() in (".md", ".markdown"):
        return path.read_text().strip()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err}); give a .md table or a results .json") from None
    if isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()):
        rows = [{"metric": k, "value": v} for k, v in data.items()]
    elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        rows = [{"": k, **v} for k, v in data.items()]
    elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
        rows = data
    else:
        raise ValueError(f"{path}: expected {{metric: value}}, {{row: {{metric: value}}}} or a list of objects")
    return markdown.table(rows)


def model_card(info: dict, eval_markdown: str | None = None, repo_id: str | None = None) -> ModelCard:
    """Card for a run folder described by `neuroscribe_run.json` (see pipeline.write_run_info)."""
    base = hub_id(info.get("base_model"))
    dataset = hub_id(info.get("dataset"))
    peft = bool(info.get("peft")) and not info.get("merged")
    data = ModelCardData(
        base_model=base,
        datasets=[dataset] if dataset else None,
        library_name="peft" if peft else "transformers",
        pipeline_tag="text-generation",
        license="apache-2.0",
        language=["en"],
        tags=["neuroscribe", "interpretability", "neuron-explanations", "trl", info.get("kind", "sft")]
        + (["lora"] if info.get("peft") else []),
    )
    name = repo_id or "PATH_OR_REPO_ID"
    load = (
        f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{name}")'
        if peft
        else f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{name}")'
    )
    facts = [
        ("base model", f"`{info.get('base_model')}`"),
        (
            "training",
            f"{info.get('kind', 'sft').upper()} with TRL, "
            f"{'LoRA adapter' + (' (merged into the base weights)' if info.get('merged') else '') if info.get('peft') else 'full fine-tuning'}, "
            f"{info.get('global_step', '?')} optimizer steps",
        ),
        ("dataset", f"`{info.get('dataset')}` (config `{info.get('dataset_config')}`)"),
        ("subject model explained", f"`{info.get('data_source_model')}`"),
        ("teacher / simulator", f"`{info.get('data_teacher')}` / `{info.get('data_simulator')}`"),
        ("prompt", f"style `{info.get('data_prompt_style')}`, version `{info.get('data_prompt_version')}`"),
        ("recipe", f"`recipe.yaml` in this repository (from `{info.get('recipe')}`)"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in facts)
    evaluation = eval_markdown or "No evaluation results were attached to this upload."
    body = f"""
# Neuron / feature explainer ({info.get("kind", "sft").upper()})

Given text excerpts with a neuron's or SAE feature's activation on every token, this model writes a
one-line explanation of what the unit responds to. Trained with neuroscribe
on explanations distilled from a teacher model (best of k, scored by simulation on held-out exemplars).

| | |
|---|---|
{table}

## Use

Build the prompt with `neuroscribe.prompts.explainer_messages(record, style=...)` (the same prompt
version as above) and read the answer with `neuroscribe.prompts.parse_explanation`.

```python
{load}
```

## Evaluation

{evaluation}

## Intended use and limitations

For interpretability research: drafting hypotheses about units of the subject model above. An
explanation is a hypothesis to test, not a finding: scores measure how well a simulator predicts
activations from the text, on exemplars from one corpus; they can be high for explanations that are
incomplete and low for units that are polysemantic. The model has only seen prompts in the format
above; other formats, other subject models or other activation scales are out of distribution.
"""
    return ModelCard("---\n" + data.to_yaml() + "\n---\n" + body)
