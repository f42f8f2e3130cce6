"""Tiny random models and tokenizers built offline in seconds, for tests (never imported by the package).

Nothing here is downloaded: the tokenizer is a byte-level BPE trained with `tokenizers` on the
bundled corpus, the model a randomly initialised transformers config of the requested family.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512, texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from neuroscribe.corpus import builtin_documents

    texts = texts or [d for _, d in zip(range(400), builtin_documents())]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | Path,
    family: str = "llama",
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
):
    """A random causal LM of `family` (llama, qwen2, gemma, gpt2) saved with a tokenizer in out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tok = build_tokenizer(out_dir, vocab_size)
    else:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tok.save_pretrained(str(out_dir))
    vocab = len(tok)
    config = _config(family, vocab, hidden, layers, intermediate, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out_dir))
    return out_dir


def _config(family: str, vocab: int, hidden: int, layers: int, intermediate: int, tok):
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_inner=intermediate, n_positions=512, **common)
    kwargs = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        **common,
    )
    if family == "llama":
        return LlamaConfig(tie_word_embeddings=True, **kwargs)
    if family == "qwen2":
        return Qwen2Config(**kwargs)
    if family == "gemma":
        return Gemma2Config(head_dim=16, **kwargs)
    raise ValueError(f"unknown tiny model family {family!r}")


def build_sentencepiece_tokenizer(out_dir: str | Path, vocab_size: int = 400, texts: list[str] | None = None):
    """A Llama-2-style tokenizer built offline: Metaspace pieces (`▁the`), byte-fallback `<0xNN>` pieces for
    characters outside the vocabulary, and Llama-2's decoder, which strips the leading space of a
    sequence's first piece (so decoding a lone `▁the` gives "the")."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from neuroscribe.corpus import builtin_documents

    texts = texts or [d for _, d in zip(range(300), builtin_documents())]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    base.train_from_iterator(texts, trainer)
    spec = json.loads(base.to_str())
    vocab = dict(spec["model"]["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out_dir))
    return fast
