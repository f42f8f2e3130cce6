"""Supervised fine-tuning of an explainer on distilled winners (alignment-handbook style entry point).

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m neuroscribe.train.sft \
        --config recipes/llama-3.1-8b-explainer/sft/config_lora.yaml
    python train/sft.py --config recipes/tiny/sft.yaml          # by path, one process

Any recipe key can be overridden on the command line (`--learning_rate 1e-4`); unknown keys fail.
Data: prompt/completion rows, so TRL computes the loss on the completion only.
"""

from __future__ import annotations

import sys

from neuroscribe.train.args import parse_args
from neuroscribe.train.pipeline import train_explainer


def main(script_args, training_args, model_args, source=None, callbacks=None) -> dict:
    """Train, save and write the run card; returns the run info (empty on non-main ranks)."""
    from trl import SFTTrainer

    return train_explainer("sft", SFTTrainer, script_args, training_args, model_args, source, callbacks)


def cli(argv=None) -> None:
    script_args, training_args, model_args, source = parse_args("sft", argv)
    main(script_args, training_args, model_args, source)


if __name__ == "__main__":
    cli(sys.argv[1:])
