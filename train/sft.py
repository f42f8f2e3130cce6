"""Supervised fine-tuning of an explainer on distilled winners (alignment-handbook style entry point).

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m neuroscribe.train.sft \
        --config recipes/llama-3.1-8b-explainer/sft/config_lora.yaml
    python train/sft.py --config recipes/tiny/sft.yaml          # by path, one process

Any recipe key can be overridden on the command line (`--learning_rate 1e-4`); unknown keys fail.
Data: prompt/completion rows, so TRL computes the loss on the completion only.
"""

from __future__ import annotations

import sys


def main(script_args, training_args, model_args, source=None, callbacks=None) -> dict:
    """Train, save and write the run card; returns the run info (empty on non-main ranks)."""
    import transformers
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    from neuroscribe.train import pipeline

    # seed -> logging
    transformers.set_seed(training_args.seed)
    pipeline.setup_logging(training_args)
    pipeline.setup_wandb(script_args, training_args)
    if training_args.push_to_hub:
        raise ValueError("push_to_hub: publish a finished run with `neuroscribe publish` (it writes a proper card)")
    # data
    dataset = pipeline.load_training_dataset(script_args)
    # tokenizer
    model_dir = pipeline.resolve_model_dir(model_args.model_name_or_path, training_args)
    tokenizer = pipeline.load_tokenizer(model_dir)
    # model: TRL instantiates it from model_init_kwargs, after DeepSpeed ZeRO-3 is set up
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision, **(training_args.model_init_kwargs or {}),
    }
    # trainer
    trainer = SFTTrainer(
        model=model_dir,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=pipeline.eval_split(script_args, training_args, dataset),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=callbacks,
    )
    # train (resuming from the last checkpoint) -> save -> card
    return pipeline.train_and_save("sft", trainer, tokenizer, dataset, script_args, training_args, model_args,
                                   source, model_dir)


def cli(argv=None) -> None:
    from neuroscribe.train.args import parse_args

    script_args, training_args, model_args, source = parse_args("sft", argv)
    main(script_args, training_args, model_args, source)


if __name__ == "__main__":
    cli(sys.argv[1:])
