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
    from trl import SFTTrainer, get_quantization_config

    from neuroscribe.train import pipeline
    from neuroscribe.train.args import peft_config

    # seed -> logging -> data -> tokenizer
    run = pipeline.prepare(script_args, training_args, model_args)
    # model: TRL instantiates it from model_init_kwargs, after DeepSpeed ZeRO-3 is set up
    training_args.model_init_kwargs = pipeline.model_init_kwargs(model_args, training_args)
    # trainer
    trainer = SFTTrainer(
        model=run.model_dir,
        args=training_args,
        train_dataset=run.train,
        eval_dataset=run.eval,
        processing_class=run.tokenizer,
        peft_config=peft_config(model_args, script_args, run.model_dir),
        quantization_config=get_quantization_config(model_args),
        callbacks=callbacks,
    )
    # train (resuming from the last complete checkpoint) -> save -> card
    return pipeline.train_and_save("sft", trainer, run, script_args, training_args, model_args, source)


def cli(argv=None) -> None:
    from neuroscribe.train.args import parse_args

    script_args, training_args, model_args, source = parse_args("sft", argv)
    main(script_args, training_args, model_args, source)


if __name__ == "__main__":
    cli(sys.argv[1:])
