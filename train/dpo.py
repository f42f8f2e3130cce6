"""Preference optimisation (DPO) of an explainer on distilled pairs (alignment-handbook style entry point).

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m neuroscribe.train.dpo \
        --config recipes/llama-3.1-8b-explainer/dpo/config_lora.yaml
    python train/dpo.py --config recipes/tiny/dpo.yaml          # by path, one process

Any recipe key can be overridden on the command line (`--learning_rate 1e-4`); unknown keys fail.
Data: prompt/chosen/rejected rows. With LoRA the reference model is the base with the adapter off;
fully fine-tuned, TRL loads a frozen copy of the starting model.
"""

from __future__ import annotations

import sys

from neuroscribe.train.args import parse_args
from neuroscribe.train.pipeline import train_explainer


def main(script_args, training_args, model_args, source=None, callbacks=None) -> dict:
    """Train, save and write the run card; returns the run info (empty on non-main ranks)."""
    from trl import DPOTrainer

    adjust = _ignore_bias_buffers if script_args.ignore_bias_buffers else None
    return train_explainer("dpo", DPOTrainer, script_args, training_args, model_args, source, callbacks, adjust)


def _ignore_bias_buffers(trainer) -> None:
    """DDP cannot broadcast boolean buffers: leave them out of its sync."""
    import torch

    trainer.model._ddp_params_and_buffers_to_ignore = [
        name for name, buf in trainer.model.named_buffers() if buf.dtype == torch.bool
    ]


def cli(argv=None) -> None:
    script_args, training_args, model_args, source = parse_args("dpo", argv)
    main(script_args, training_args, model_args, source)


if __name__ == "__main__":
    cli(sys.argv[1:])
