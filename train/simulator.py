"""Train a per-token activation simulator (alignment-handbook style entry point).

    accelerate launch -m neuroscribe.train.simulator --config recipes/tiny/simulator.yaml
    python -m neuroscribe.train.simulator --config recipes/llama-3.1-8b-simulator/stage1/config_lora.yaml

Data: a `neuroscribe distill simulator-data` folder, `dataset_config` stage1 or stage2. The model is
any causal LM; the loss is cross-entropy over the logits of 11 fixed vocabulary ids at the text
positions only (`neuroscribe.simulators.finetuned_format`: format, labels, alignment, read-out). A
`model_name_or_path` that is itself a trained simulator (stage 2 after stage 1) keeps its class ids,
and a LoRA one keeps training its adapter. The run folder is loadable as `finetuned:RUN_DIR` wherever
a simulator spec is accepted; so is every `checkpoint-*` in it.

Recipe keys: ExplainerArguments, TRL's SFTConfig (its TrainingArguments, with `max_length`) and
ModelConfig; the SFT-only options this Trainer would silently ignore are refused.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

from neuroscribe.runs.simulator import is_simulator, read_simulator_file, write_simulator_file
from neuroscribe.runs.train import adapter_base, has_adapter
from neuroscribe.simulators.finetuned_format import SimulatorFormat
from neuroscribe.train import pipeline
from neuroscribe.train.args import parse_args, peft_config
from neuroscribe.train.cards import hub_id
from neuroscribe.train.pipeline import resolve_model_dir
from neuroscribe.train.simulator_loss import ClassCrossEntropy, SimulatorCollator

# SFTConfig fields with no meaning here; setting one is an error rather than a silent no-op.
SFT_ONLY = (
    "packing",
    "packing_strategy",
    "padding_free",
    "eval_packing",
    "completion_only_loss",
    "assistant_only_loss",
    "chat_template_path",
    "dataset_text_field",
    "dataset_kwargs",
    "eos_token",
    "pad_token",
    "loss_type",
    "activation_offloading",
    "truncation_mode",
)


def check_training_args(training_args, model_args) -> None:
    from trl import SFTConfig

    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        for f in dataclasses.fields(SFTConfig)
        if f.name in SFT_ONLY
    }
    changed = [k for k, v in defaults.items() if getattr(training_args, k) != v]
    if changed:
        raise ValueError(f"simulator recipe sets SFT-only option(s) {changed}; the simulator trainer ignores them")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("simulator training does not support load_in_4bit/load_in_8bit; use LoRA in bf16")
    if training_args.push_to_hub:
        raise ValueError("push_to_hub: publish a finished run with `neuroscribe publish` (it writes a proper card)")
    training_args.remove_unused_columns = False  # the collator reads the raw text columns
    training_args.prediction_loss_only = True  # never gather full-vocabulary logits during eval
    training_args.label_names = ["labels"]


def load_model(model_dir: str, model_args, training_args, script_args):
    """The causal LM to train: a saved LoRA simulator keeps training its adapter; else LoRA or full."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        **(training_args.model_init_kwargs or {}),
    }
    adapter = has_adapter(model_dir)  # continue a trained simulator: its LoRA on its base
    base_dir = model_dir
    if adapter:
        base_dir = resolve_model_dir(adapter_base(model_dir), training_args)
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    trains_adapter = adapter or model_args.use_peft
    if trains_adapter and training_args.activation_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need grads
    if adapter:
        return PeftModel.from_pretrained(model, model_dir, is_trainable=True)
    return get_peft_model(model, peft_config(model_args, script_args, base_dir)) if model_args.use_peft else model


def simulator_format(model_dir: str, tokenizer, base_model: str, dataset) -> SimulatorFormat:
    """Class ids of a simulator being trained further, else chosen for this tokenizer; a new run id; and
    every feature (with its exemplar splits) the data trains on, added to what it was trained on before."""
    features = {k for part in dataset.values() if "feature" in part.column_names for k in part["feature"]}
    splits = {s for part in dataset.values() if "split" in part.column_names for s in part["split"]}
    if is_simulator(model_dir):
        fmt = read_simulator_file(model_dir)
        fmt.check_tokenizer(tokenizer, model_dir)
        features |= set(fmt.trained_features)
        splits |= set(fmt.trained_splits)
        fmt = dataclasses.replace(fmt, run_id=uuid.uuid4().hex)
    else:
        fmt = SimulatorFormat.for_tokenizer(tokenizer, base_model)
    return dataclasses.replace(fmt, trained_features=tuple(sorted(features)), trained_splits=tuple(sorted(splits)))


def _save_format_callback(fmt):
    from transformers import TrainerCallback

    class SaveSimulatorFormat(TrainerCallback):
        """Every checkpoint gets simulator.json, so `finetuned:RUN/checkpoint-N` loads too."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    write_simulator_file(ckpt, fmt)

    return SaveSimulatorFormat()


def main(script_args, training_args, model_args, source=None, callbacks=None) -> dict:
    """Train, save (weights + tokenizer + simulator.json) and write the run card; returns the run info."""
    from transformers import Trainer

    # seed -> logging -> data -> tokenizer
    check_training_args(training_args, model_args)
    run = pipeline.prepare(script_args, training_args, model_args, require_chat_template=False)
    # format: class ids, and the features this simulator must never score afterwards
    fmt = simulator_format(run.model_dir, run.tokenizer, model_args.model_name_or_path, run.dataset)
    # model
    model = load_model(run.model_dir, model_args, training_args, script_args)
    # trainer
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=run.train,
        eval_dataset=run.eval,
        processing_class=run.tokenizer,
        data_collator=SimulatorCollator(run.tokenizer, training_args.max_length),
        compute_loss_func=ClassCrossEntropy(fmt.class_token_ids),
        callbacks=[_save_format_callback(fmt), *(callbacks or [])],
    )
    # train (resuming from the last complete checkpoint) -> save -> card
    return pipeline.train_and_save(
        "simulator",
        trainer,
        run,
        script_args,
        training_args,
        model_args,
        source,
        save_extra=lambda folder: write_simulator_file(folder, fmt),
        card=simulator_card,
        extra={
            "class_token_ids": list(fmt.class_token_ids),
            "class_tokens": list(fmt.class_tokens),
            "run_id": fmt.run_id,
            "simulator_base_model": fmt.base_model,
            "trained_features": len(fmt.trained_features),
        },
    )


def simulator_card(info: dict, eval_markdown: str | None = None, repo_id: str | None = None):
    """Card for a simulator run folder (built from run facts only, never from secrets)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = hub_id(info.get("simulator_base_model") or info.get("base_model"))
    peft = bool(info.get("peft")) and not info.get("merged")
    data = ModelCardData(
        base_model=base,
        library_name="peft" if peft else "transformers",
        license="apache-2.0",
        language=["en"],
        tags=["neuroscribe", "interpretability", "activation-simulator"] + (["lora"] if info.get("peft") else []),
    )
    name = repo_id or "PATH"
    body = f"""
# Per-token activation simulator (neuroscribe)

Given an explanation of a neuron / SAE feature and a text, predicts the unit's activation class
(0..10) at every token: one forward over `## Neuron Description: <explanation>` / `## Input:` and
the text; at each text token the logits of 11 fixed vocabulary ids (`simulator.json`:
{info.get("class_tokens")}) are the class distribution and the prediction is its expected value.

| | |
|---|---|
| base model | `{info.get("simulator_base_model") or info.get("base_model")}` |
| training | masked cross-entropy over the 11 class logits, {"LoRA adapter" if info.get("peft") else "full fine-tuning"}{" (merged)" if info.get("merged") else ""}, {info.get("global_step", "?")} optimizer steps |
| dataset | `{info.get("dataset")}` (config `{info.get("dataset_config")}`) |
| subject model of the data | `{info.get("data_source_model")}` |
| explanations from | teacher `{info.get("data_teacher")}`, scored by `{info.get("data_simulator")}` |
| recipe | `recipe.yaml` (from `{info.get("recipe")}`) |

## Use

```python
from neuroscribe.simulators import load_simulator
simulator = load_simulator("finetuned:{name}")   # a local folder; download a Hub repo first
```
or `neuroscribe score --simulator finetuned:{name} ...`.

## Evaluation

{eval_markdown or "No evaluation results were attached to this upload."}

## Limitations

Labels are activations relative to each feature's max, discretised to 11 classes. The simulator has
seen explanations written for one subject model and corpus; scores it gives elsewhere are out of
distribution. A high simulation score means the explanation predicts activations *as this simulator
reads it*, not that the explanation is complete.
"""
    return ModelCard("---\n" + data.to_yaml() + "\n---\n" + body)


def cli(argv=None) -> None:
    script_args, training_args, model_args, source = parse_args("simulator", argv)
    main(script_args, training_args, model_args, source)


if __name__ == "__main__":
    cli(sys.argv[1:])
