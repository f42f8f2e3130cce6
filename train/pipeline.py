"""The steps every training entry point runs, so `sft.py`, `dpo.py` and `simulator.py` stay short and
linear: `prepare` (seed -> logging -> output folder -> data -> tokenizer) and `train_and_save`
(train, resuming from the last complete checkpoint -> save -> run info -> card); `train_explainer` is
both around one TRL trainer, the whole of `sft.py` and `dpo.py`. The run folder's
files are owned by `neuroscribe.runs.train`."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.models import load_model, resolve
from neuroscribe.runs import datasets as dataset_files
from neuroscribe.runs.files import file_digest, fingerprint, guard_output
from neuroscribe.runs.train import (
    STARTED,
    is_finished,
    last_complete_checkpoint,
    read_started,
    write_recipe,
    write_run_info,
    write_started,
)
from neuroscribe.train.args import RecipeSource, peft_config, redacted_recipe_text
from neuroscribe.train.cards import model_card

logger = logging.getLogger("neuroscribe.train")
LLAMA3_PAD = "<|finetune_right_pad_id|>"  # Llama-3.1 reserves this; padding with eos works too


@dataclass
class Prepared:
    """What `prepare` hands the trainer: the data, the model folder and its tokenizer."""

    dataset: Any  # datasets.DatasetDict
    model_dir: str
    tokenizer: Any
    train: Any
    eval: Any


def prepare(script_args, training_args, model_args, require_chat_template: bool = True) -> Prepared:
    """seed -> logging -> output folder check -> data -> tokenizer: the head of every entry point."""
    import transformers

    transformers.set_seed(training_args.seed)
    if not sys.stderr.isatty():  # a log (CI, the demo): the Trainer's loss lines, not a bar frame per step
        training_args.disable_tqdm = True
    setup_logging(training_args)
    setup_wandb(script_args, training_args)
    if training_args.push_to_hub:
        raise ValueError("push_to_hub: publish a finished run with `neuroscribe publish` (it writes a proper card)")
    check_output_dir(script_args, training_args, model_args)
    dataset = load_training_dataset(script_args)
    model_dir = resolve_model_dir(model_args.model_name_or_path, training_args)
    tokenizer = load_tokenizer(model_dir, require_chat_template)
    return Prepared(
        dataset,
        model_dir,
        tokenizer,
        dataset[script_args.dataset_train_split],
        eval_split(script_args, training_args, dataset),
    )


def train_explainer(
    kind: str, trainer_class, script_args, training_args, model_args, source=None, callbacks=None, adjust=None
) -> dict:
    """The whole of an explainer entry point (`sft.py`, `dpo.py`) around its TRL trainer class; returns the
    run info (empty on non-main ranks). `adjust(trainer)` runs once the trainer is built, before training."""
    from trl import get_quantization_config

    # seed -> logging -> data -> tokenizer
    run = prepare(script_args, training_args, model_args)
    # model: TRL instantiates it from model_init_kwargs, after DeepSpeed ZeRO-3 is set up
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = trainer_class(
        model=run.model_dir,
        args=training_args,
        train_dataset=run.train,
        eval_dataset=run.eval,
        processing_class=run.tokenizer,
        peft_config=peft_config(model_args, script_args, run.model_dir),
        quantization_config=get_quantization_config(model_args),
        callbacks=callbacks,
    )
    if adjust is not None:
        adjust(trainer)
    # train (resuming from the last complete checkpoint) -> save -> card
    return train_and_save(kind, trainer, run, script_args, training_args, model_args, source)


def model_init_kwargs(model_args, training_args) -> dict:
    """How TRL instantiates the model (after DeepSpeed ZeRO-3 is set up)."""
    return {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        **(training_args.model_init_kwargs or {}),
    }


# bookkeeping that never changes the weights: a rerun may differ in these and still resume
_NOT_FINGERPRINTED = {
    "output_dir",
    "run_name",
    "resume_from_checkpoint",
    "overwrite",
    "report_to",
    "project",
    "disable_tqdm",
    "local_rank",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "logging_dir",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "logging_nan_inf_filter",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "save_on_each_node",
    "save_only_model",
    "push_to_hub",
    "hub_token",
    "hub_model_id",
    "hub_strategy",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "wandb_project",
    "wandb_entity",
    "wandb_group",
    "ddp_timeout",
    "dataloader_num_workers",
    "skip_memory_metrics",
    "trackio_space_id",
    "trackio_bucket_id",
    "trackio_static_space_id",
    "check_heldout",
}


def local_dataset(script_args) -> Path | None:
    """The dataset folder a recipe names, resolved (None: a Hub dataset id)."""
    name = script_args.dataset_name
    return Path(name).resolve() if name and Path(name).exists() else None


def run_settings(script_args, training_args, model_args) -> dict:
    """Every setting that changes what a run trains (its data's content included), for its fingerprint."""
    settings: dict[str, Any] = {}
    for part in (dataclasses.asdict(script_args), training_args.to_dict(), dataclasses.asdict(model_args)):
        settings.update({k: v for k, v in part.items() if k not in _NOT_FINGERPRINTED})
    folder = local_dataset(script_args)
    if folder is not None:
        data = folder / script_args.dataset_config if script_args.dataset_config else folder
        settings["dataset_name"] = str(folder)
        settings["dataset_content"] = file_digest(sorted(data.glob("*.parquet"))) if data.is_dir() else None
    return settings


def check_output_dir(script_args, training_args, model_args) -> None:
    """Protect what output_dir holds, then stamp it with this run's fingerprint (neuroscribe_started.json).

    A finished run is never trained over, and checkpoints are resumed only by a run of the same
    fingerprint (settings and dataset content); anything else is refused unless `overwrite`, which
    clears the folder first. The output folder may not overlap the dataset or the starting model."""
    out = training_args.output_dir
    guard_output(
        out,
        {
            "dataset_name": script_args.dataset_name if Path(script_args.dataset_name or "").exists() else None,
            "model_name_or_path": model_args.model_name_or_path
            if Path(model_args.model_name_or_path or "").exists()
            else None,
        },
    )
    settings = run_settings(script_args, training_args, model_args)
    stamp = fingerprint(settings)
    conflict = _resume_conflict(out, stamp, settings, training_args)
    if conflict and not script_args.overwrite:
        raise FileExistsError(f"{out} {conflict}; pass --overwrite true to replace it, or choose another output_dir")
    with training_args.main_process_first(desc="stamp the output folder"):
        if training_args.process_index == 0:
            if conflict and Path(out).exists():
                shutil.rmtree(out)
            Path(out).mkdir(parents=True, exist_ok=True)
            dataset = local_dataset(script_args)
            write_started(
                out,
                {
                    "fingerprint": stamp,
                    "dataset": script_args.dataset_name,
                    "dataset_path": str(dataset) if dataset else None,
                    "base_model": model_args.model_name_or_path,
                    "settings": settings,
                },
            )


def _resume_conflict(out: str, stamp: str, settings: dict, training_args) -> str:
    """Why output_dir may not be trained into as it is ("" when it may)."""
    if is_finished(out):
        return "holds a finished training run"
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is None or training_args.resume_from_checkpoint:
        return ""
    started = read_started(out)
    if started is None:
        return f"holds {checkpoint.name} of a run with no fingerprint ({STARTED}), which cannot be resumed safely"
    if started.get("fingerprint") != stamp:
        before = started.get("settings", {})
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        return f"holds {checkpoint.name} of another configuration (changed: {', '.join(changed[:8]) or '?'})"
    return ""


def setup_logging(training_args) -> None:
    """Main process at the recipe's log level, replicas at warning; every line says its rank."""
    import datasets
    import transformers

    rank = training_args.process_index
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:  # e.g. DDP on CPU without use_cpu: N solo runs, one output_dir
        raise RuntimeError(
            f"launched as {launched} processes but the Trainer sees world size "
            f"{training_args.world_size}; on CPU set `use_cpu: true` in the recipe"
        )
    logging.basicConfig(
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", level=logging.INFO, force=True
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    # one line per rank, whatever the log level: the proof that every rank started
    print(f"[neuroscribe] rank {rank} of {training_args.world_size} on {training_args.device}", flush=True)


def setup_wandb(script_args, training_args) -> None:
    """Point wandb at the project named in the recipe; transformers' callback logs from rank 0 only."""
    if "wandb" not in (training_args.report_to or []):
        return
    for env, value in (
        ("WANDB_PROJECT", script_args.wandb_project),
        ("WANDB_ENTITY", script_args.wandb_entity),
        ("WANDB_RUN_GROUP", script_args.wandb_group),
    ):
        if value:
            os.environ[env] = value


def resolve_model_dir(spec: str, training_args) -> str:
    """A model spec (bundled name, local dir, hub id) -> what `from_pretrained` takes.

    A bundled GGUF is de-quantised once into the neuroscribe cache (main process first, so ranks
    don't race), then every rank loads that folder.
    """

    src = resolve(spec)
    if src.gguf_file is None:
        return src.path
    with training_args.main_process_first(desc="convert bundled model"):
        src = resolve(spec)
        if src.gguf_file is not None:
            load_model(spec)
            src = resolve(spec)
    if src.gguf_file is not None:
        raise RuntimeError(
            f"model {spec}: could not write the converted copy to the neuroscribe cache; "
            "set NEUROSCRIBE_CACHE to a writable folder"
        )
    return src.path


def load_tokenizer(model_dir: str, require_chat_template: bool = True):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = LLAMA3_PAD if LLAMA3_PAD in tok.get_vocab() else tok.eos_token
    if require_chat_template and not tok.chat_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template; the explainer data is conversational")
    return tok


def load_training_dataset(script_args):
    """Load the dataset named in the recipe as a DatasetDict.

    A local folder is read by its Parquet files: `load_dataset(DIR, config)` caches by the folder's
    *name* and config, so a rebuilt folder (or another folder called the same) could be served stale.
    """
    import datasets

    name, config = script_args.dataset_name, script_args.dataset_config
    if not name:
        raise ValueError("dataset_name is not set (a `neuroscribe distill build` folder or a Hub dataset id)")
    local = Path(name)
    if local.exists():
        folder = local / config if config else local
        files = {p.stem: str(p) for p in sorted(folder.glob("*.parquet"))}
        if not files:
            raise FileNotFoundError(f"dataset {name}: no Parquet files in {folder}")
        ds = datasets.load_dataset("parquet", data_files=files)
    else:
        ds = datasets.load_dataset(name, config)
    if script_args.dataset_train_split not in ds:
        raise ValueError(f"dataset {name} ({config}): no split {script_args.dataset_train_split!r}, has {list(ds)}")
    if script_args.max_train_samples:
        train = ds[script_args.dataset_train_split]
        ds[script_args.dataset_train_split] = train.select(range(min(len(train), script_args.max_train_samples)))
    if script_args.check_heldout:
        check_heldout(name, ds)
    return ds


def check_heldout(name: str, ds) -> None:
    """Training must never see a feature reserved for eval."""
    path = Path(name) / dataset_files.HELDOUT
    if not path.exists():
        return
    heldout = set(dataset_files.read_heldout(path, allow_empty=True))
    for split, part in ds.items():
        if "feature" in part.column_names:
            leaked = heldout & set(part["feature"])
            if leaked:
                raise ValueError(
                    f"dataset {name} split {split}: {len(leaked)} held-out feature(s) "
                    f"listed in {path}, e.g. {sorted(leaked)[:3]}"
                )


def eval_split(script_args, training_args, ds):
    if training_args.eval_strategy == "no":
        return None
    if script_args.dataset_test_split not in ds:
        raise ValueError(
            f"eval_strategy is {training_args.eval_strategy} but the dataset has no split "
            f"{script_args.dataset_test_split!r} (has {list(ds)})"
        )
    return ds[script_args.dataset_test_split]


def last_checkpoint(training_args) -> str | None:
    """What to resume from: the recipe's resume_from_checkpoint, else the newest COMPLETE checkpoint in
    output_dir (one whose save was cut off is passed over)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    found = last_complete_checkpoint(training_args.output_dir)
    last = str(found) if found else None
    if last:
        logger.info("resuming from %s", last)
        print(f"[neuroscribe] resuming from {last}", flush=True)
    return last


def dataset_provenance(name: str) -> dict:
    """Teacher, simulator, prompt version ... from a `distill build` folder's build.json, when local."""
    build = dataset_files.read_build(name) if Path(name).is_dir() else None
    if build is None:
        return {}
    return {
        "source_model": build.source_model,
        **{name: build.explain_meta(name) for name in ("teacher", "simulator", "prompt_style", "prompt_version")},
        "heldout_features": len(build.splits["heldout"]),
    }


def run_card(
    kind: str,
    trainer,
    script_args,
    model_args,
    source: RecipeSource | None,
    base_model_dir: str,
    metrics: dict,
    card=None,
    extra: dict | None = None,
) -> dict:
    """Save recipe copy, run facts and a model card into output_dir (main process only).

    card: info -> ModelCard (default: the explainer card); extra: more run facts for the info."""

    out = Path(trainer.args.output_dir)
    source = source or RecipeSource(None, ())
    info = {
        "kind": kind,
        "base_model": model_args.model_name_or_path,
        "base_model_dir": base_model_dir,
        "peft": bool(model_args.use_peft),
        "dtype": model_args.dtype,
        "dataset": script_args.dataset_name,
        "dataset_path": str(local_dataset(script_args) or "") or None,
        "dataset_config": script_args.dataset_config,
        "recipe": source.path,
        "overrides": list(source.overrides),
        "global_step": trainer.state.global_step,
        "metrics": metrics,
        **{f"data_{k}": v for k, v in dataset_provenance(script_args.dataset_name).items()},
        **(extra or {}),
    }
    if source.path:
        write_recipe(out, redacted_recipe_text(source.path))
    (card or model_card)(info).save(out / "README.md")
    write_run_info(out, info)  # last: its presence marks a finished run
    return info


def train_and_save(
    kind: str, trainer, run: Prepared, script_args, training_args, model_args, source, save_extra=None, **run_info
) -> dict:
    """train (resuming from the last checkpoint) -> metrics -> save -> run card, the tail every entry point
    shares; returns the run info on the main rank ({} elsewhere). `save_extra(output_dir)` runs on the
    main rank beside the tokenizer (e.g. a simulator's format file)."""
    result = trainer.train(resume_from_checkpoint=last_checkpoint(training_args))
    metrics = {**result.metrics, "train_samples": len(run.train)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    info = {}
    if trainer.accelerator.is_main_process:
        run.tokenizer.save_pretrained(training_args.output_dir)
        if save_extra is not None:
            save_extra(training_args.output_dir)
        info = run_card(kind, trainer, script_args, model_args, source, run.model_dir, metrics, **run_info)
    trainer.accelerator.wait_for_everyone()
    trainer.end()  # finish trackers, destroy the process group
    return info
