"""Every stage's configuration, in one place: one frozen dataclass per stage, a docstring per field.

The command line is generated from these (`neuroscribe.options`), so each default and help text
exists once; every stage is callable from Python with its config object (`collect(CollectConfig(...))`)
and saves `to_dict(config)` into its run folder. This module imports nothing heavy, so `neuroscribe
--help` stays fast.

A field with a fixed set of values is typed `Literal[...]` (the aliases below): the command line offers
exactly those choices, and `one_of` refuses any other value from a Python caller; the value itself stays
a plain string, so saved JSON, fingerprints and cache keys do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from neuroscribe.options import choice_fields, to_dict
from neuroscribe.protocols import protocol
from neuroscribe.records import ACTIVE_FRACTION
from neuroscribe.specs import split_spec

DEFAULT_MODEL = "smollm2-135m-instruct"
HF_DEFAULT = f"hf:{DEFAULT_MODEL}"
BUILTIN_CORPUS = "builtin:python-docs"
TRAIN_KINDS = ("sft", "dpo", "simulator")

# The fixed choices of config fields, each written once (tests/test_options.py checks that they match
# what the code reading them accepts: models.DTYPES, prompts.STYLES, scorers.TARGETS, eval COMPARISONS).
Dtype = Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
PromptStyle = Literal["plain", "highlighted", "contrastive", "output", "input+output", "graded"]
Target = Literal["relu", "raw"]
Polarity = Literal["auto", "both", "positive"]
Comparison = Literal[
    "distillation_gain",
    "student_vs_format_control",
    "student_vs_top_tokens",
    "student_vs_teacher_best_of_1",
    "student_vs_teacher_best_of_k",
    "student_k_vs_teacher_k",
    "teacher_vs_null",
    "oracle_vs_null",
]
Phrasings = Literal["suite", "paraphrases"]


def at_least(config, minimum: int, *names: str) -> None:
    """Refuse a field below `minimum` (None, where allowed, means unset and passes): a zero or negative
    count would otherwise silently mean something else (no batch at all, the whole corpus, a slice from the end)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def one_of(config) -> None:
    """Refuse a field typed `Literal[...]` whose value is none of its choices (None passes where the type
    allows it), so a Python caller meets the same choices as the command line."""
    for name, (choices, optional) in choice_fields(type(config)).items():
        value = getattr(config, name)
        for v in value if isinstance(value, tuple) else (value,):
            if v not in choices and not (v is None and optional):
                raise ValueError(f"--{name.replace('_', '-')} {v!r}: choose one of {list(choices)}")


def cache_apart(cache: str | None, inputs: dict[str, str | tuple[str, ...] | None]) -> None:
    """The sqlite cache is written, so it is never an input nor inside one (`--cache STORE/x.sqlite` would
    write into the store). A backend spec (hf:PATH, finetuned:PATH) counts by its local path."""
    if not cache:
        return
    c = Path(cache).expanduser().resolve()
    for name, value in inputs.items():
        for v in [value] if isinstance(value, str) else value or ():
            local = v if Path(v).exists() else split_spec(v)[1]
            if not local or not Path(local).exists():
                continue
            i = Path(local).expanduser().resolve()
            if c == i or i in c.parents or c in i.parents:
                raise ValueError(
                    f"--cache {cache} and input {name} {v} overlap; a stage never writes into its inputs: "
                    "put the cache elsewhere"
                )


# ------------------------------------------------------------------------------ shared


@dataclass(frozen=True)
class CallLimits:
    """How HTTP backends (openai:, anthropic:) may spend a run: time, retries, calls, money."""

    timeout: float = 120.0
    """Seconds one HTTP request may take before it is abandoned (and retried)."""
    retries: int = 5
    """Retries of a failed request (429, 5xx, timeouts, garbage replies) before its feature is marked failed."""
    max_calls: int | None = None
    """At most this many HTTP requests in the run (retries and requests in flight count)."""
    max_usd: float | None = None
    """At most this much money in the run (requests in flight count at their pessimistic estimate)."""
    concurrency: int = 8
    """Requests in flight at once, per backend."""
    allow_plain_http: bool = False
    """Allow sending an API key over plain http to a host that is not this machine."""

    def __post_init__(self) -> None:
        # a zero timeout or concurrency would fail (or hang) every call only once the run is under way
        checks = {"timeout": self.timeout > 0, "retries": self.retries >= 0, "concurrency": self.concurrency >= 1}
        checks |= {"max_calls": self.max_calls is None or self.max_calls >= 0}
        checks |= {"max_usd": self.max_usd is None or self.max_usd >= 0}
        wants = {"timeout": "> 0", "retries": ">= 0", "concurrency": ">= 1", "max_calls": ">= 0", "max_usd": ">= 0"}
        bad = next((name for name, ok in checks.items() if not ok), None)
        if bad:
            raise ValueError(f"--{bad.replace('_', '-')} must be {wants[bad]}, got {getattr(self, bad)}")


# ------------------------------------------------------------------------------ collect


@dataclass(frozen=True)
class MiningConfig:
    """What collect keeps per feature (every count is per feature, over all splits). A count left unset
    comes from the sampling protocol (`neuroscribe.protocols`): explain + held-out x (splits - 1)."""

    protocol: str = "transluce"
    """Sampling preset: transluce (top + quantile to explain, 1:1 top-and-random score), openai (top to
    explain, top-and-random score) or anthropic (top, 12 activation intervals, random and other-context
    windows to explain; top, intervals, random and out-of-context tokens pooled in the score)."""
    top_k: int | None = None
    """Top-activating windows per feature (transluce: 30)."""
    pool: int = 64
    """Activating windows sampled uniformly, from which the quantile exemplars are drawn."""
    quantiles: int | None = None
    """Activation quantile bins of the pool (transluce: 5)."""
    per_quantile: int | None = None
    """Windows drawn from each quantile bin (transluce: 3)."""
    intervals: int | None = None
    """Equal-width activation intervals of (0, max] to sample from (anthropic: 12)."""
    per_interval: int | None = None
    """Windows drawn from each interval (anthropic: 6)."""
    random_k: int | None = None
    """Uniformly random windows per feature (transluce: 45, 15 per split, as many as top + quantile, so the
    1:1 top-and-random score uses every held-out exemplar)."""
    inactive_k: int | None = None
    """Non-activating windows per feature (peak <= active_fraction x max), for detection negatives."""
    inactive_pool: int = 30
    """Extra uniformly sampled windows kept to find the inactive ones among (memory: features x slots)."""
    hard_negatives: int | None = None
    """Windows holding one of the feature's top tokens yet peaking low (transluce: 6)."""
    other_context: int | None = None
    """Windows holding one of the feature's top tokens, whatever they activate (anthropic: 10)."""
    out_of_context: int | None = None
    """Top-activating tokens each run alone through the subject (anthropic: 40, 20 per held-out split)."""
    negative_ratio: float = ACTIVE_FRACTION
    """A hard negative peaks at no more than this fraction of the feature's max."""
    splits: tuple[str, ...] = field(default=("explain", "score", "test"), metadata={"sep": ","})
    """Splits, comma-separated: the first is shown to explainers, the others are held out."""
    seed: int = 0
    """Seed of every sampling decision (a pure function of seed, window and feature)."""

    def __post_init__(self) -> None:
        if len(self.splits) < 2 or len(set(self.splits)) != len(self.splits) or self.splits[0] != "explain":
            raise ValueError(
                f"--splits needs at least two distinct names, the first `explain` (the one split prompts show and "
                f"simulators refuse, by that name), got {','.join(self.splits)!r}"
            )
        at_least(self, 0, "pool", "inactive_pool")
        preset, n = protocol(self.protocol), len(self.splits)
        wanted = {
            "top_k": preset.total("top", n),
            "quantiles": preset.quantiles,
            "per_quantile": preset.total("quantile", n),
            "intervals": preset.intervals,
            "per_interval": preset.total("interval", n),
            "random_k": preset.total("random", n),
            "inactive_k": preset.total("inactive", n),
            "hard_negatives": preset.total("hard_negative", n),
            "other_context": preset.total("other_context", n),
            "out_of_context": preset.total("out_of_context", n),
        }
        custom = False
        for name, value in wanted.items():  # frozen: resolved once, so to_dict and fingerprints see numbers
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, value)
            elif given < 0:
                raise ValueError(f"--{name.replace('_', '-')} is {given}; counts cannot be negative")
            custom |= given is not None and given != value
        if custom and not self.protocol.endswith("+custom"):
            object.__setattr__(self, "protocol", f"{preset.name}+custom")
        if self.per_interval > 0 and self.intervals == 0:
            raise ValueError(f"--per-interval {self.per_interval} needs --intervals > 0 (protocol {self.protocol})")

    @property
    def preset(self):
        """The sampling protocol (`neuroscribe.protocols.Protocol`) this mining follows."""
        return protocol(self.protocol)


@dataclass(frozen=True)
class CollectConfig:
    """`neuroscribe collect`: which model, features and text; what to keep (`mining`)."""

    out: str
    """Store folder to write."""
    model: str = DEFAULT_MODEL
    """Subject model: HF id, local folder, .gguf file or the bundled name."""
    features: tuple[str, ...] = ("mlp:0",)
    """Feature spec, e.g. 'mlp:0-3', 'mlp:5:0-99', 'sae:DIR' (repeatable, or ';'-joined)."""
    dataset: str = BUILTIN_CORPUS
    """builtin:python-docs, a local .txt/.jsonl/.json/.parquet/.csv file or folder, or a hub dataset id."""
    text_field: str = "text"
    """Text column of the dataset."""
    window: int = 64
    """Tokens per window (the exemplar length)."""
    context: int = 4
    """Preceding stream tokens fed before each window, never part of the exemplar: keeps its first token off
    the attention-sink position and gives it real left context (the corpus module documents why)."""
    max_windows: int | None = 1024
    """Stop after this many windows (0 or none: the whole corpus)."""
    batch_size: int = 16
    """Windows per forward pass."""
    shard_windows: int = 256
    """Windows per checkpointed shard: the resume granularity."""
    dtype: Dtype = "float32"
    """Subject dtype: float32, bfloat16 or float16 (activations are stored as float32)."""
    device: str = "cpu"
    """Device of the subject model."""
    polarity: Polarity = "auto"
    """auto (MLP neurons: both signs; SAE latents: positive), both, or positive."""
    output_side: bool = False
    """Also record what each feature does to the output (logit lens and token change; outputs.parquet),
    for the `output` and `input+output` prompt styles."""
    output_tokens: int = 10
    """Tokens in each output-side list."""
    steer: float = 4.0
    """Token change: the feature is amplified by this many times its max activation."""
    basis_fit_windows: int = 128
    """Corpus windows (the first ones) a control basis (random:/pca:/ica:) is fitted on."""
    mining: MiningConfig = field(default_factory=MiningConfig)
    """What to keep per feature."""
    overwrite: bool = False
    """Replace an existing store, or discard a checkpoint of another configuration."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        one_of(self)
        at_least(self, 1, "window", "batch_size", "shard_windows", "output_tokens", "basis_fit_windows")
        at_least(self, 0, "context", "max_windows")
        if self.max_windows == 0:
            object.__setattr__(self, "max_windows", None)


# ------------------------------------------------------------------------------ explain, score


@dataclass(frozen=True)
class ExplainConfig:
    """`neuroscribe explain`: teacher, simulator, k, prompt and sampling of a best-of-k run."""

    store: str
    """Store folder written by `collect`."""
    out: str
    """Output folder: candidates.jsonl, meta.json, usage.json."""
    teacher: str = HF_DEFAULT
    """hf:MODEL, openai:MODEL[@URL,...], anthropic:MODEL or vllm:MODEL."""
    simulator: str = HF_DEFAULT
    """hf:MODEL, finetuned:PATH, openai:MODEL@URL or parsed:openai:MODEL@URL."""
    k: int = 4
    """Candidates per feature (best-of-k)."""
    prompt_style: PromptStyle | None = None
    """Prompt style: plain, graded, highlighted, contrastive, output or input+output; default: the store's
    sampling protocol's (`Protocol.prompt_style`: plain, graded for anthropic)."""
    max_exemplars: int | None = None
    """Exemplars shown to the teacher per feature (default: all the store's sampling protocol shows:
    transluce 15, openai 5, anthropic 49)."""
    temperature: float = 1.0
    """Sampling temperature of the teacher."""
    max_tokens: int = 60
    """Longest explanation, in tokens."""
    seed: int = 0
    """Base seed; sample i of a prompt is drawn with seed + i."""
    split: str | None = None
    """Held-out split the candidates are scored on, never explain (default: the store's selection split, its
    second: score unless collect --splits named it otherwise)."""
    target: Target = "relu"
    """What a simulation is correlated with: relu (the polarity-applied activation above 0) or raw."""
    allow_in_sample: bool = False
    """Let a fine-tuned simulator score features it was trained on (every such score is marked in-sample)."""
    features: tuple[str, ...] = ()
    """Only these feature keys (repeatable); none: every live feature."""
    max_features: int | None = None
    """At most this many features (0 or none: all)."""
    batch_features: int = 8
    """Features whose k requests go to the teacher together."""
    cache: str | None = None
    """sqlite cache of LLM calls and simulations (default OUT/cache.sqlite)."""
    dtype: Dtype = "float32"
    """dtype of local (hf:) teacher and simulator weights; bfloat16 is 3-4x faster on AMX CPUs and GPUs."""
    teacher_batch_size: int = 16
    """Sequences per generate() batch of a local teacher."""
    detection: bool = False
    """Also compute detection and fuzzing (needs a local simulator to answer Yes/No)."""
    limits: CallLimits = field(default_factory=CallLimits)
    """Timeouts, retries and budget of HTTP teachers and simulators."""
    overwrite: bool = False
    """Replace a finished run, or discard progress of another configuration."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        one_of(self)
        at_least(self, 1, "k", "max_tokens", "max_exemplars", "batch_features", "teacher_batch_size")
        at_least(self, 0, "max_features")
        if self.split == "explain":
            raise ValueError("--split must be a held-out split (score or test), never explain")
        cache_apart(self.cache, {"--store": self.store, "--teacher": self.teacher, "--simulator": self.simulator})
        if self.max_features == 0:
            object.__setattr__(self, "max_features", None)

    def resumable_fields(self) -> dict:
        """What progress must match to be resumed: everything that changes a candidate or its score."""
        skip = ("out", "cache", "limits", "overwrite", "progress", "batch_features", "teacher_batch_size")
        return {k: v for k, v in to_dict(self).items() if k not in skip}


@dataclass(frozen=True)
class ScoreConfig:
    """`neuroscribe score`: which explanations, on which store and split, by which simulator."""

    explanations: str
    """JSONL of {feature, explanation}, an explain run's candidates.jsonl, or OpenAI explanation JSON."""
    store: str
    """Store folder written by `collect`."""
    out: str
    """Output folder: scored.jsonl, summary.json."""
    simulator: str = HF_DEFAULT
    """hf:MODEL, finetuned:PATH, openai:MODEL@URL or parsed:openai:MODEL@URL."""
    split: str | None = None
    """Held-out split to score on (default: the store's selection split, its second: score)."""
    target: Target = "relu"
    """What a simulation is correlated with: relu (the polarity-applied activation above 0) or raw."""
    allow_in_sample: bool = False
    """Let a fine-tuned simulator score features it was trained on (every such score is marked in-sample)."""
    cache: str | None = None
    """sqlite cache of simulations (default OUT/cache.sqlite)."""
    dtype: Dtype = "float32"
    """dtype of a local simulator's weights."""
    limits: CallLimits = field(default_factory=CallLimits)
    """Timeouts, retries and budget of an HTTP simulator."""
    intervention: bool = False
    """Also score by intervention (`neuroscribe.interventions`: a judge tells continuations with the feature
    amplified from without; named tokens vs the probability change), into interventions.jsonl."""
    judge: str = "subject"
    """Judge of the intervention score: subject (the store's model) or a local model spec."""
    steer: float = 4.0
    """Intervention: the feature is amplified by this many times its max activation."""
    overwrite: bool = False
    """Replace an existing scored.jsonl."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        one_of(self)
        if self.split == "explain":
            raise ValueError("--split must be a held-out split (score or test), never explain")
        inputs = {"--explanations": self.explanations, "--store": self.store, "--simulator": self.simulator}
        cache_apart(self.cache, {**inputs, "--judge": self.judge})


# ------------------------------------------------------------------------------ distill


@dataclass(frozen=True)
class DistillConfig:
    """`neuroscribe distill build`: which explain run, where to, and how winners and pairs are chosen."""

    scored: str
    """Explain run folder (candidates.jsonl + meta.json)."""
    out: str
    """Output dataset folder: sft/, chat/, preference/, heldout.txt, build.json, README.md."""
    threshold: float = 0.3
    """An SFT winner must score at least this on the explain run's split."""
    min_margin: float = 0.1
    """A preference pair's chosen minus rejected score, at least."""
    max_pairs_per_feature: int = 4
    """Preference pairs per feature, at most."""
    augment: int = 0
    """Extra prompts per training feature, from shuffled exemplar subsets."""
    augment_pool: int = 20
    """Augmented prompts draw from the top-N explain-split exemplars (Transluce: 20) ..."""
    augment_sizes: tuple[int, int] = (10, 20)
    """... this many of them, shuffled (Transluce: 10-20)."""
    heldout_fraction: float = 0.1
    """Share of units reserved for eval (never trained on)."""
    validation_fraction: float = 0.1
    """Share of units for the validation split."""
    heldout_file: str | None = None
    """Reserve exactly the features of this heldout.txt (or dataset folder) instead of drawing them."""
    max_exemplars: int | None = None
    """Exemplars per prompt; the explain run's own value always wins (the student sees what the teacher saw)."""
    seed: int = 0
    """Seed of the split draw and of augmentation."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    push_to_hub: str | None = None
    """Also push the dataset folder to this Hub repo."""
    private: bool = True
    """Make the pushed Hub repo private."""


@dataclass(frozen=True)
class SimulatorDataConfig:
    """`neuroscribe distill simulator-data`: rows for training a fine-tuned simulator."""

    scored: str
    """Explain run folder (candidates.jsonl + meta.json)."""
    out: str
    """Output dataset folder: stage1/ (random candidates), stage2/ (best), heldout.txt, build.json."""
    random_per_exemplar: int = 1
    """Stage-one candidates paired with each exemplar."""
    heldout_fraction: float = 0.1
    """Share of units never trained on."""
    validation_fraction: float = 0.1
    """Share of units for the validation split."""
    heldout_file: str | None = None
    """A heldout.txt or a `distill build` folder whose held-out features to respect."""
    seed: int = 0
    """Seed of the split draw and of the stage-one candidate draw."""
    overwrite: bool = False
    """Replace a non-empty output folder."""

    def __post_init__(self) -> None:
        at_least(self, 1, "random_per_exemplar")


# ------------------------------------------------------------------------------ train


@dataclass(frozen=True)
class PlanConfig:
    """`neuroscribe plan`: a training run on paper, from its recipe and accelerate config."""

    config: str
    """Training recipe YAML."""
    accelerate_config: str
    """recipes/accelerate_configs/*.yaml"""
    gpus: int = 8
    """GPUs."""
    gpu_mem: float = 80.0
    """GB per GPU."""
    examples: int = 10_000
    """Training examples per epoch."""
    tokens_per_example: int | None = None
    """Tokens per example; default: the recipe's max_length."""
    mfu: float = 0.4
    """Assumed model FLOP utilisation."""
    peak_tflops: float = 989.0
    """Peak bf16 TFLOP/s per GPU (H100 SXM: 989)."""
    model_config: str | None = None
    """config.json of the model (default: the shipped Llama-3.1-8B one for that model)."""


@dataclass(frozen=True)
class WorkloadConfig:
    """`neuroscribe plan-workload`: the loop's GPU-hours for every MLP neuron of a subject (`train/workload.py`)."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """Subject, explainer and simulator (a shipped config, or a folder with config.json)."""
    model_config: str | None = None
    """config.json of the model (default: the shipped one for that model)."""
    features: int | None = None
    """Features to explain (default: every MLP neuron x `polarities`)."""
    polarities: int = 2
    """Signs explained per neuron (positive and negative activations)."""
    corpus_tokens: int = 100_000_000
    """Tokens the subject reads in collect (an assumption: set your corpus's size)."""
    context: int = 1024
    """Tokens per collect sequence (the attention term's context)."""
    k: int = 50
    """Candidate explanations per feature."""
    prompt_tokens: int = 2000
    """Tokens of one explainer prompt (instructions + exemplars)."""
    explanation_tokens: int = 40
    """Tokens of one sampled explanation."""
    sequences: int = 25
    """Held-out sequences each candidate is scored on."""
    sequence_tokens: int = 95
    """Tokens per held-out sequence."""
    header_tokens: int = 40
    """Simulator header tokens per sequence (format line + the explanation)."""
    eval_features: int = 1000
    """Held-out features of the student's eval (best-of-1, then scored)."""
    gpus: int = 8
    """GPUs, all busy (data parallel over features)."""
    peak_tflops: float = 312.0
    """Peak bf16 TFLOP/s per GPU (A100: 312; H100 SXM: 989)."""
    mfu: float = 0.4
    """Model FLOP utilisation of reading (prefill)."""
    decode_tokens_per_s: float = 2500.0
    """Batched decode tokens/s per GPU for `model` (an assumption for an 8B model on an A100 under vLLM;
    measure yours with benchmarks/vllm_simulate.py's generation row on the GPU)."""

    def __post_init__(self) -> None:
        at_least(
            self, 1, "features", "polarities", "corpus_tokens", "k", "sequences", "gpus", "eval_features", "context"
        )
        if not 0 < self.mfu <= 1 or self.peak_tflops <= 0 or self.decode_tokens_per_s <= 0:
            raise ValueError("plan-workload needs 0 < --mfu <= 1, --peak-tflops > 0 and --decode-tokens-per-s > 0")


@dataclass(frozen=True)
class PublishConfig:
    """`neuroscribe publish`: a training run folder -> a Hub repository (or a local folder only)."""

    run_dir: str
    """Training output folder (adapter or full weights)."""
    repo: str | None = None
    """Hub repo id to upload to (token from HF_TOKEN or the login cache, never written anywhere)."""
    dry_run: str | None = None
    """Only write the repository folder here."""
    merge: bool = False
    """Merge the LoRA weights into the base model."""
    branch: str = "main"
    """Hub branch to upload to."""
    overwrite: bool = False
    """Allow replacing an existing branch or folder."""
    eval_results: str | None = None
    """An eval's results.json, or a markdown table, for the card."""
    recipe: str | None = None
    """Recipe YAML to ship beside the weights (default: the run's own)."""
    private: bool = True
    """Make a new Hub repo private."""

    def __post_init__(self) -> None:
        if not self.repo and not self.dry_run:
            raise ValueError("give --repo to upload or --dry-run DIR to write the folder only")


# ------------------------------------------------------------------------------ eval, demo


@dataclass(frozen=True)
class EvalConfig:
    """`neuroscribe eval`: student vs teacher vs baselines on held-out features, every row scored alike."""

    store: str
    """Store folder written by `collect`."""
    features: str
    """heldout.txt from `distill build`, or the dataset folder holding it."""
    student: str
    """HF id, model folder, LoRA adapter folder, or any backend spec (hf:, openai:, ...)."""
    out: str
    """Output folder: results.json, report.md, plots/, browser.html."""
    teacher: str | None = None
    """A teacher backend spec, to explain afresh (best of k)."""
    teacher_results: str | None = None
    """Or: an `explain` output folder whose candidates are the teacher's."""
    simulators: tuple[str, ...] = (HF_DEFAULT,)
    """Simulators (repeat --simulator): every row is scored by each, one table per simulator. The first
    selects the student's best-of-k and must be the one that selected the teacher's candidates."""
    judged_rows: tuple[str, ...] = ()
    """Rows the second and later simulators score (default: every row; a slow judge can take the headline ones)."""
    judged_features: int | None = None
    """Features the second and later simulators score: N drawn with the seed (default: all)."""
    reliability_features: int | None = None
    """Features whose unselected rows are also scored on the selection split, for the split-half
    reliability: N drawn with the seed (default: all)."""
    base: str | None = None
    """The student's starting model: its greedy best-of-1 is the 'before training' row (distillation gain)."""
    control: str | None = None
    """A format-control student: trained like the student on the same winners shuffled across features
    (`sft_control` of `distill build`); its greedy best-of-1 row isolates what content adds over form."""
    student_seeds: tuple[str, ...] = ()
    """More training seeds of the student (the same recipe, another --seed; repeat the option): each is
    evaluated greedy, and the comparisons of `student best-of-1` then get a hierarchical interval that
    resamples seeds, then units or rule families, then features."""
    control_seeds: tuple[str, ...] = ()
    """More training seeds of the format-control student, paired with student_seeds in order."""
    primary: Comparison = "distillation_gain"
    """The one primary comparison, declared before the eval runs (e.g. student_vs_format_control); the
    report states it first, every other comparison is secondary."""
    reference: str | None = None
    """JSONL {feature, explanation} of known-true explanations (planted rules): the ceiling row, for the
    features it names."""
    reference_label: str = "true explanation"
    """How the report names the reference row."""
    training_runs: tuple[str, ...] = ()
    """Training run folders whose loss curves the report plots (the student's own is added if local)."""
    calibration: str | None = None
    """A calibration.json (planted-rule fidelity of the simulators) to open the report with."""
    target: Target = "relu"
    """What a simulation is correlated with: relu (the polarity-applied activation above 0) or raw."""
    allow_in_sample: bool = False
    """Let a fine-tuned simulator score features it was trained on (every such score is marked in-sample)."""
    datasets: str | None = None
    """Another dataset folder to check for leaked features (the features file's own folder is always checked)."""
    k: int = 4
    """Student samples for best-of-k (selected on `score`, reported on `test`)."""
    prompt_style: PromptStyle | None = None
    """Prompt style; default: the one the student was trained on (build.json), else plain."""
    max_exemplars: int | None = None
    """Exemplars per prompt; default: as in training (build.json), else all the store's protocol shows."""
    temperature: float = 1.0
    """Sampling temperature of best-of-k samples (best-of-1 is greedy)."""
    intervention: bool = False
    """Also score every row by intervention on the subject's own features (`neuroscribe.interventions`;
    planted features have no direction and are left out); a table in the report."""
    steer: float = 4.0
    """Intervention: the feature is amplified by this many times its max activation."""
    max_tokens: int = 60
    """Longest explanation, in tokens."""
    seed: int = 0
    """Seed of sampling, baselines and bootstrap."""
    detection: bool = False
    """Also detection and fuzzing (needs a local simulator to answer Yes/No)."""
    dtype: Dtype = "float32"
    """dtype of local student, teacher and simulator; bfloat16 is ~2x faster on AMX CPUs."""
    cache: str | None = None
    """sqlite cache (default OUT/cache.sqlite)."""
    n_resamples: int = 2000
    """Bootstrap resamples of every interval."""
    report: bool = True
    """Write report.md, plots and browser.html beside results.json."""
    limits: CallLimits = field(default_factory=CallLimits)
    """Timeouts, retries and budget of HTTP explainers and simulators."""
    overwrite: bool = False
    """Replace an existing eval in the output folder."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        one_of(self)
        if (self.teacher is None) == (self.teacher_results is None):
            raise ValueError("give exactly one of --teacher SPEC (explain afresh) or --teacher-results DIR")
        at_least(self, 1, "k", "max_tokens", "max_exemplars", "n_resamples")
        at_least(self, 0, "judged_features", "reliability_features")
        inputs = {"--store": self.store, "--features": self.features, "--student": self.student, "--base": self.base}
        inputs |= {"--teacher": self.teacher, "--teacher-results": self.teacher_results, "--simulator": self.simulators}
        cache_apart(self.cache, {**inputs, "--reference": self.reference, "--datasets": self.datasets})


@dataclass(frozen=True)
class DemoConfig:
    """`neuroscribe demo`: the whole loop on CPU with the bundled model, sized for a 2-core machine."""

    out: str = "runs/demo"
    """Run folder; a rerun reuses every stage found there."""
    model: str = DEFAULT_MODEL
    """Subject, prompted simulator, the fine-tuned simulator's base and the student's base."""
    features: str = "mlp:6:0-4;mlp:20:0-4"
    """Real neurons to collect (10 neurons x 2 signs = 20 features)."""
    windows: int = 256
    """Corpus windows the real neurons are collected on."""
    window: int = 24
    """Tokens per exemplar window (real and planted)."""
    planted_windows: int = 2000
    """Corpus windows planted features are mined from."""
    planted_explainer: int = 40
    """Planted rules of the suite's explainer part in the explain run (student training data)."""
    planted_heldout: int = 31
    """Planted rules of the suite's held-out part (calibration and eval); the suite has 31."""
    heldout_real: int = 3
    """Real neurons held out for the eval (both signs of each)."""
    simulator_steps: int = 64
    """Optimizer steps of the fine-tuned simulator (trained once, then reused from the user cache)."""
    simulator_lr: float = 1e-3
    """Its learning rate (cosine schedule)."""
    simulator_batch: int = 8
    """Its batch size (rows of one window each)."""
    simulator_per_rule: int = 6
    """Top windows per training rule (each labelled with a random true phrasing) ..."""
    simulator_random: int = 3
    """... and random windows per rule (mostly all-zero labels)."""
    simulator_others: int = 0
    """Mismatched rows per window: the window labelled under this many other rules (their phrasing, their
    labels), which teaches the simulator to read the explanation rather than the text."""
    simulator_phrasings: Phrasings = "suite"
    """Which true phrasings label its training rows: suite (the rules' own phrasings, which share the
    teacher's template grammar) or paraphrases (natural paraphrases only, no template wording)."""
    planted_graded: bool = False
    """Planted rules fire at strengths fixed per matched text (labels span the classes) instead of 1.0.
    Off in the proof too: a judge trained on graded labels scored true rules 0.13 against wrong ones'
    0.12 (first proof run, its held-out rules); the same settings with binary labels 0.41 against 0.11
    on the validation part (README, benchmarks/judge.py)."""
    larger_suite: bool = False
    """Add 40 more word rules to the planted suite (enough to hold out 130+ rules)."""
    suite_fractions: tuple[float, float] = (0.55, 0.3)
    """Shares of each family's rules dealt to the simulator and the explainer parts; the rest is held out."""
    unseen_families: tuple[str, ...] = ()
    """Rule families the simulator never trains on (a quarter of their rules to the explainer, the rest held
    out), so the validity gate (b) has something to judge."""
    simulator_epochs: float | None = None
    """Train the simulator this many passes over its rows (overrides simulator_steps)."""
    student_seeds: int = 1
    """Train the student this many times (seeds seed, seed+1, ...): the eval's primary comparison then gets
    a hierarchical interval over seeds."""
    format_control: bool = False
    """Also train a format-control student on the same winners shuffled across features (sft_control)."""
    primary: Comparison = "distillation_gain"
    """The eval's primary comparison, declared here before it runs."""
    proof: bool = False
    """The proof configuration (`eval.demo.PROOF`: 137 held-out planted rules of 7 families, two of them
    never seen by a simulator trained two epochs on paraphrases with mismatched rows, half of them near
    misses; 3 student seeds, a format control as the primary comparison); its own run folder."""
    simulator_windows: int = 2000
    """Corpus windows the training rows are drawn from."""
    simulator_lora_layers: str | None = None
    """LoRA layers of the simulator ('last:N', or none: all)."""
    calibration_wrong: int = 3
    """Wrong explanations per held-out planted rule in the calibration."""
    prompted_rules: int = 3
    """Held-out planted rules the (slow) prompted simulator is calibrated on."""
    teacher: str = "patterns:v1"
    """Teacher spec. The default writes template phrases over the marked tokens, because the bundled 135M
    model cannot explain (its best-of-4 scores like the null explanation); hf:, openai:, anthropic: work."""
    k: int = 3
    """Teacher candidates per feature (best-of-k)."""
    dtype: Literal["auto", Dtype] = "auto"
    """dtype of every local model; auto measures which is faster here (bf16 needs AMX to win)."""
    threads: int = 0
    """torch threads (0: measured with the dtype; on the README's 2-core machine 2, which trains the
    simulator 1.7x faster than 1)."""
    prompt_style: PromptStyle = "highlighted"
    """The shortest prompt: it bounds explain, training and eval time."""
    max_exemplars: int = 5
    """Exemplars per explainer prompt."""
    max_tokens: int = 24
    """Longest explanation, in tokens (the winners' phrases take 6-15)."""
    threshold: float = 0.2
    """An SFT winner must score at least this on the selection split."""
    sft_steps: int = 32
    """Student LoRA SFT optimizer steps (~2 epochs of the demo's winners; 16 steps of 4 left it unchanged)."""
    sft_lr: float = 1e-3
    """Student learning rate (cosine to 0): fast enough to move a LoRA in 32 steps, fluent after."""
    sft_batch: int = 2
    """Student batch size."""
    sft_lora_layers: str | None = "last:10"
    """Student LoRA layers ('last:N' or none: all); the top layers alone halve a step's time."""
    dpo_steps: int = 0
    """DPO steps after SFT (0: no DPO; the report shows the student after each stage that ran)."""
    judge_features: int = 4
    """Held-out features the prompted second judge scores (it is ~5x slower than the fine-tuned one)."""
    reliability_features: int = 6
    """Held-out features whose unselected rows are re-scored on the selection split (split-half r)."""
    seed: int = 0
    """Seed of every draw."""

    def __post_init__(self) -> None:
        one_of(self)
        if self.simulator_others < 0:
            raise ValueError(f"--simulator-others must be >= 0, got {self.simulator_others}")
        if self.student_seeds < 1:
            raise ValueError(f"--student-seeds must be >= 1, got {self.student_seeds}")
        if self.simulator_epochs is not None and not self.simulator_epochs > 0:
            raise ValueError(f"--simulator-epochs must be > 0, got {self.simulator_epochs}")
        a, b = self.suite_fractions
        if min(a, b) < 0 or a + b > 1:
            raise ValueError(f"--suite-fractions must be two shares in [0, 1] summing to at most 1, got {a}, {b}")
