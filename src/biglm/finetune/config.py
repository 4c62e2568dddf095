"""``FinetuneConfig``: everything ``biglm finetune`` needs, loaded from YAML + ``--section.field`` overrides.

Sections::

    task:   kind (cloze-classification | extractive-qa | seq2seq | instruction | reward | dpo) and one section per kind
    data:   train / valid / test files (or hf:NAME with splits) and the field mapping
    train:  TrainConfig with fine-tuning defaults; ``epochs`` sets ``steps``
    model:  overrides of the pretrained model's config (e.g. ``dropout: 0.1``); the task adds the heads it
            needs (a length head for seq2seq, a span head for extractive QA)

``init`` (top level) is the pretrained checkpoint or run folder. Resolution is defaults < YAML (with
``base:``) < command line, as for pre-training.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from biglm.config import ModelConfig
from biglm.configurable import from_dict, load_config, to_dict
from biglm.errors import BiglmError, ConfigError, check
from biglm.evaluate.sequence_score import MASKED_SCORES, MaskedScore
from biglm.generate.options import ParallelOptions
from biglm.train.config import TrainConfig
from biglm.train.schedule import Schedule

TASK_KINDS: tuple[str, ...] = ("cloze-classification", "extractive-qa", "seq2seq", "instruction", "reward", "dpo")
WRITING_KINDS: tuple[str, ...] = ("seq2seq", "instruction", "dpo")
"""Task kinds whose fine-tunes are trained to write text (what ``chat`` / ``serve`` / ``annotate`` expect); the
others classify, extract a span or score."""
SECTIONS = ("init", "task", "data", "train", "model")


@dataclass
class ClozeConfig:
    """Classification as a cloze: the template's ``{blank}`` is filled with the label's verbalizer."""

    template: str = "{text} {blank}"
    """Python format string over the example's fields, with exactly one ``{blank}`` (the answer slot).
    Text after the blank is context too: BiGLM sees it (it is in X), it just cannot see the blank."""
    verbalizer: dict[str, str] = field(default_factory=dict)
    """Label -> the word(s) that fill the blank (multi-token allowed), e.g. ``{entailment: "Yes"}``.
    Labels are compared as strings (``0`` and ``"0"`` are the same label)."""
    scoring: Literal["single-pass", "greedy-order"] = "single-pass"
    """How each label's verbalizer is scored at prediction time (``biglm.evaluate.scoring``)."""
    length_normalise: bool = False
    """Divide each verbalizer's log-probability by its token count before comparing labels."""

    def __post_init__(self) -> None:
        check(self.scoring in ("single-pass", "greedy-order"),
              f"task.cloze_classification.scoring={self.scoring!r}: expected single-pass or greedy-order")
        self.verbalizer = {str(k): str(v) for k, v in (self.verbalizer or {}).items()}


@dataclass
class QAConfig:
    """Extractive question answering (SQuAD v1.1): a start/end span head over the context tokens."""

    max_length: int = 384
    """Tokens per window (BOS question EOS context EOS); at most the model's max_seq_len."""
    doc_stride: int = 128
    """Tokens shared by consecutive windows of a long context."""
    max_question_length: int = 64
    """Questions longer than this keep their first tokens."""
    max_answer_length: int = 30
    """Longest answer span (tokens) considered at prediction."""
    n_best: int = 20
    """Start and end candidates per window kept by the post-processing."""

    def __post_init__(self) -> None:
        for name in ("max_length", "max_question_length", "max_answer_length", "n_best"):
            v = getattr(self, name)
            check(isinstance(v, int) and v > 0, f"task.extractive_qa.{name}={v!r}: must be a positive integer")
        check(self.doc_stride >= 0, f"task.extractive_qa.doc_stride={self.doc_stride}: must be >= 0")


@dataclass
class Seq2SeqConfig:
    """Source X -> target Y with Mask-Predict: Y masked uniformly in training, decoded in T passes."""

    length: Literal["head", "eos"] = "head"
    """How the output length is decided: ``head`` trains the length head (mean-pooled X -> length class) and
    decodes its top-k lengths; ``eos`` pads Y with EOS to ``max_target_length`` (EOS in the loss, as LLaDA
    does) and cuts the output at the first EOS."""
    max_source_length: int = 0
    """Source tokens kept (its first ones); 0: whatever fits beside the target in max_seq_len."""
    max_target_length: int = 64
    """Longest target (tokens); the length head gets max_target_length + 1 classes, ``eos`` pads to it."""
    truncate_targets: bool = False
    """A target longer than max_target_length is an error (naming the line), or cut when this is true."""
    target_space: bool = True
    """Tokenise the target as it reads in running text, after a space (its first word too), so that a word
    copied from the source is the same tokens in both; predictions are stripped of it."""
    source_space: bool = True
    """Tokenise the source after a space too: its first word then has the tokens it has anywhere else, and a
    target that starts with it copies it token for token (false: the source as at a text's start, as the
    paper's code; with ``target_space`` true the first word then differs: "process"+"ing" against
    "Ġprocessing", which also shifts every later target token against its source token)."""
    target_positions: Literal["aligned", "continue"] = "aligned"
    """Masked models: where the target sits (``ModelConfig.suffix_positions``): ``aligned`` starts it at the
    source's first position (target token j shares its position with source token j), ``continue`` after
    the source (the paper's code; the offset to "my" source token then changes with the source length, and
    at small sizes copying is not learned: docs/results/learning.md, "Fine-tuning that learns")."""
    source_mask_ratio: float = 0.0
    """Fraction of source tokens masked in training (0 in BiGLM's code; Instruct-XMLR used 0.15)."""
    min_mask_ratio: float = 0.0
    """Target masking ratio ~ U(min_mask_ratio, 1), at least one token."""
    full_mask_fraction: float = 0.3
    """Share of training rows whose whole target is masked (what Mask-Predict's first pass sees); the others
    are masked at a ratio ~ U(min_mask_ratio, 1). 0: the paper's code. On the demo's title task 0.3 reached
    ROUGE-L 31 in 1,200 steps where 0 reached 24 (docs/results/learning.md, "Fine-tuning that learns")."""
    label_smoothing: float = 0.0
    """Label smoothing of the token loss (0.1 in Instruct-XMLR)."""
    length_loss_weight: float = 0.1
    """Weight of the length head's cross-entropy (BiGLM's code: 0.1)."""
    steps: int = 10
    """Mask-Predict passes T at prediction."""
    length_candidates: int = 3
    """Lengths decoded in parallel with ``length: head``."""
    length_rule: Literal["average", "joint"] = "joint"
    """How the winning length candidate is chosen: the best joint score log p(length) + Σ log p(token), or the
    best average token log-probability (BiGLM's code; on a copy task it picks a wrong length 82% of the time
    where the length head itself is right: see docs/how-to/finetune.md)."""
    strategy: str = "mask-predict"
    """Decoding strategy (``biglm.generate.STRATEGIES``): mask-predict, threshold or blocks."""
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    """The parallel strategies' options (``biglm.generate.options.ParallelOptions``), checked against
    ``strategy``; unset (null) fields keep the strategy's defaults; masked models only."""
    prefix_cache: bool = True
    """Encode the source once and reuse its keys/values in every pass (exact; false re-encodes, to check)."""
    metrics: list[str] = field(default_factory=lambda: ["rouge", "bleu", "exact_match"])
    """Of rouge (1/2/L/Lsum, stemmed), bleu (sacrebleu BLEU-4), bleu2 (BLEU-2), distinct (Distinct-1/2), meteor
    (nltk; needs WordNet), exact_match."""
    num_beams: int = 1
    """GLM models (autoregressive decoding in part B): beam search with this many beams (1 = greedy)."""
    no_repeat_ngram_size: int = 0
    """GLM models: never repeat an n-gram of this size (GLM's summarisation: 3)."""
    length_penalty: float = 1.0
    """GLM models: beam score = sum log p / length ** this."""
    min_target_length: int = 0
    """GLM models: no [eop] before this many tokens."""

    section: ClassVar[str] = "task.seq2seq"

    def __post_init__(self) -> None:
        w = self.section
        check(self.length in ("head", "eos"), f"{w}.length={self.length!r}: expected head or eos")
        check(self.target_positions in ("aligned", "continue"),
              f"{w}.target_positions={self.target_positions!r}: expected aligned or continue")
        check(self.max_target_length > 0, f"{w}.max_target_length={self.max_target_length}: must be > 0")
        check(self.max_source_length >= 0, f"{w}.max_source_length={self.max_source_length}: must be >= 0")
        check(0.0 <= self.source_mask_ratio < 1.0, f"{w}.source_mask_ratio={self.source_mask_ratio}: must be in [0, 1)")
        check(0.0 <= self.min_mask_ratio <= 1.0, f"{w}.min_mask_ratio={self.min_mask_ratio}: must be in [0, 1]")
        check(0.0 <= self.full_mask_fraction <= 1.0,
              f"{w}.full_mask_fraction={self.full_mask_fraction}: must be in [0, 1]")
        check(0.0 <= self.label_smoothing < 1.0, f"{w}.label_smoothing={self.label_smoothing}: must be in [0, 1)")
        check(self.length_loss_weight >= 0, f"{w}.length_loss_weight={self.length_loss_weight}: must be >= 0")
        check(self.steps > 0 and self.length_candidates > 0, f"{w}.steps and length_candidates: must be > 0")
        check(self.length_rule in ("average", "joint"),
              f"{w}.length_rule={self.length_rule!r}: expected average or joint")
        check(self.num_beams >= 1 and self.no_repeat_ngram_size >= 0 and self.min_target_length >= 0,
              f"{w}.num_beams={self.num_beams}, no_repeat_ngram_size={self.no_repeat_ngram_size}, min_target_length="
              f"{self.min_target_length}: need num_beams >= 1 and the others >= 0")
        try:  # the engine's checks of the strategy and its options
            self.parallel.check(self.strategy, self.prefix_cache)
        except BiglmError as e:
            raise ConfigError(f"{w}.{'parallel' if self.parallel.as_strategy_options() else 'strategy'}: {e}") from None
        known = ("rouge", "bleu", "bleu2", "distinct", "meteor", "exact_match")
        for m in self.metrics:
            check(m in known, f"{w}.metrics: unknown metric {m!r}; expected some of {', '.join(known)}")


@dataclass
class InstructionConfig(Seq2SeqConfig):
    """Instruction tuning and chat: seq2seq over chat data. The prompt X is the conversation so far rendered
    with the chat template (stored with the tokenizer), the target Y an assistant reply (BatGPT §3.2)."""

    section: ClassVar[str] = "task.instruction"

    format: Literal["auto", "messages", "flan"] = "auto"
    """Record layout: ``messages`` lists ({role, content}), FLAN-style ``instruction``/``input``/``output``, or
    ``auto`` (per record: messages when the field is there, else FLAN)."""
    messages_field: str = "messages"
    instruction_field: str = "instruction"
    input_field: str = "input"
    """Optional FLAN field appended to the instruction after a blank line."""
    output_field: str = "output"
    system_field: str = "system"
    """Optional FLAN field: a system message."""
    system_prompt: str = ""
    """A system message put first in every conversation that has none (also at chat time)."""
    all_turns: bool = False
    """Train every assistant turn (each with the history before it as X); false: only the last one."""
    target_positions: Literal["aligned", "continue"] = "continue"
    """Where the reply sits (``ModelConfig.suffix_positions``): after the conversation (``continue``, the default:
    a reply answers the end of the prompt, not its start) or ``aligned`` as seq2seq's default. On the demo
    instruction set the two measured level (test ROUGE-L 10.3 and 10.5 after 600 steps)."""
    mixture: list[dict[str, Any]] = field(default_factory=list)
    """Several training sets mixed by weight, ``[{path: a.jsonl, weight: 0.7}, {path: hf:NAME, weight: 0.3,
    split: train, config: null}]`` (instead of ``data.train``): each set's share of an epoch's examples is
    its weight's share, sampled without replacement within a set while it lasts (then repeated)."""
    max_target_length: int = 64
    truncate_targets: bool = True
    """Replies longer than max_target_length keep their first tokens (a note says how many)."""
    chat_template: str = ""
    """Empty: biglm's template (``biglm.data.chat``); ``tokenizer``: keep the tokenizer's own; else a Jinja
    template to store with the tokenizer. It must render ``messages[:i]`` + the generation prompt as a prefix
    of ``messages[:i+1]`` (checked)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.section
        check(self.format in ("auto", "messages", "flan"), f"{w}.format={self.format!r}: expected auto, messages "
              "or flan")
        for i, part in enumerate(self.mixture):
            check(isinstance(part, dict) and isinstance(part.get("path"), str) and part["path"],
                  f"{w}.mixture[{i}]: expected {{path: FILE, weight: W}}")
            unknown = set(part) - {"path", "weight", "split", "config"}
            if unknown:
                raise ConfigError(f"{w}.mixture[{i}]: unknown key {sorted(unknown)[0]!r} (path, weight, split, config)")
            weight = part.get("weight", 1.0)
            check(isinstance(weight, int | float) and weight > 0, f"{w}.mixture[{i}].weight={weight!r}: must be > 0")


@dataclass
class RewardConfig:
    """A reward model r(x, y) trained on judged pairs (BatGPT §3.3; data: ``biglm.data.preferences``)."""

    loss: Literal["hinge", "bradley-terry"] = "hinge"
    """``hinge``: the paper's max(0, 1 - d·(r(y') - r(y))); ``bradley-terry``: -log σ(d·(r(y') - r(y)))."""
    ties: Literal["drop", "pull"] = "drop"
    """Pairs judged equal (d = 0; both good or both bad): the paper's loss gives them a constant 1 and no
    gradient, so ``drop`` leaves them out (of the loss and of its mean); ``pull`` adds
    tie_weight·(r(y') - r(y))², pulling the two rewards together."""
    tie_weight: float = 1.0
    """Weight of a tie's pull loss beside a strict pair's loss (``ties: pull``)."""
    acceptability_first: bool = False
    """A pair where exactly one response is acceptable prefers that one, whatever the helpfulness choice."""
    pooling: Literal["auto", "mean", "last"] = "auto"
    """How the per-token reward becomes r(x, y): ``mean`` over the row's tokens, ``last`` at its final token
    (EOS); ``auto``: mean for masked (bidirectional) models, last for causal, bidirectional-ar and glm."""
    max_length: int = 0
    """Tokens per row ``BOS prompt EOS response EOS`` (0: the model's max_seq_len). A longer prompt keeps its
    last tokens; a response that alone does not fit keeps its first ones."""

    def __post_init__(self) -> None:
        w = "task.reward"
        check(self.loss in ("hinge", "bradley-terry"), f"{w}.loss={self.loss!r}: expected hinge or bradley-terry")
        check(self.ties in ("drop", "pull"), f"{w}.ties={self.ties!r}: expected drop or pull")
        check(self.tie_weight >= 0, f"{w}.tie_weight={self.tie_weight}: must be >= 0")
        check(self.pooling in ("auto", "mean", "last"), f"{w}.pooling={self.pooling!r}: expected auto, mean or last")
        check(isinstance(self.max_length, int) and self.max_length >= 0,
              f"{w}.max_length={self.max_length!r}: must be an integer >= 0")


@dataclass
class DPOConfig:
    """Direct Preference Optimisation on judged pairs (reference: the ``init``): exact log π for autoregressive
    policies, a sequence score (``score``) for masked (Mask-Predict) ones."""

    beta: float = 0.1
    """Strength of the implicit KL anchor to the reference policy (higher: stay closer)."""
    max_length: int = 0
    """Tokens per row ``BOS prompt response EOS`` (0: the model's max_seq_len); a longer prompt keeps its last
    tokens."""
    score: MaskedScore = "elbo"
    """Masked policies: the stand-in for log π(y|x) (``biglm.evaluate.sequence_score``): ``elbo`` (masked-diffusion
    bound, ``samples`` masks; a frozen reference scores the policy's masks in each step), ``chain`` (left-to-right
    chain rule, exact for that order, deterministic, |y|² cost), ``one-step`` (dllm's GRPO score)."""
    samples: int = 4
    """Masked policies, ``elbo`` / ``one-step``: masks drawn per response and step."""
    length_term: bool = True
    """Masked policies with a length head: add log p(|y| | x) (the policy picks its length with the head)."""
    pad_to: int = 0
    """Masked policies fine-tuned with ``length: eos``: their max_target_length (responses padded with EOS to it,
    as in training); 0: no padding."""

    def __post_init__(self) -> None:
        check(self.beta > 0, f"task.dpo.beta={self.beta}: must be > 0")
        *names, last = MASKED_SCORES
        check(self.score in MASKED_SCORES, f"task.dpo.score={self.score!r}: expected {', '.join(names)} or {last}")
        check(isinstance(self.samples, int) and self.samples > 0, f"task.dpo.samples={self.samples!r}: must be > 0")
        check(isinstance(self.pad_to, int) and self.pad_to >= 0, f"task.dpo.pad_to={self.pad_to!r}: must be >= 0")
        check(isinstance(self.max_length, int) and self.max_length >= 0,
              f"task.dpo.max_length={self.max_length!r}: must be an integer >= 0")


@dataclass
class TaskConfig:
    """Which task kind to fine-tune for; only the section of ``kind`` is used."""

    kind: str = "seq2seq"
    """The task kind: cloze-classification, extractive-qa, seq2seq, instruction, reward or dpo."""
    cloze_classification: ClozeConfig = field(default_factory=ClozeConfig)
    extractive_qa: QAConfig = field(default_factory=QAConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval_batch_size: int = 32
    """Examples per batch when predicting (validation, --eval-only, biglm predict)."""

    def __post_init__(self) -> None:
        check(self.kind in TASK_KINDS, f"task.kind={self.kind!r}: expected one of {', '.join(TASK_KINDS)}")
        check(self.eval_batch_size > 0, f"task.eval_batch_size={self.eval_batch_size}: must be > 0")

    @property
    def options(self) -> Any:
        """The section of ``kind``."""
        return getattr(self, self.kind.replace("-", "_"))


@dataclass
class FinetuneDataConfig:
    """Where the examples are and which fields hold what."""

    train: str = ""
    """Training examples: a .jsonl/.json/.csv/.tsv/.parquet file or hf:NAME (split ``train_split``)."""
    valid: str = ""
    """Validation examples (evaluated after every epoch); empty: the ``valid_split`` of an hf: train set,
    or none."""
    test: str = ""
    """Test examples (``--eval-only --split test``); empty: ``test_split`` of an hf: train set, or none."""
    hf_config: str | None = None
    """Dataset configuration name for hf: sources (e.g. ``mnli`` of ``hf:nyu-mll/glue``)."""
    train_split: str = "train"
    valid_split: str = "validation"
    test_split: str = "test"
    max_examples: int = 0
    """Read at most this many examples per split (0: all); for quick runs."""
    id_field: str = "id"
    """Example id (optional; the line number is used when absent)."""
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"
    target_field: str = "target"
    question_field: str = "question"
    context_field: str = "context"
    answers_field: str = "answers"
    """SQuAD layout: ``{"text": [...], "answer_start": [...]}``."""

    def __post_init__(self) -> None:
        check(self.max_examples >= 0, f"data.max_examples={self.max_examples}: must be >= 0")

    def spec(self, split: str) -> tuple[str, str]:
        """(source, split name) of ``split`` in train / valid / test; ("", "") when there is none."""
        path = getattr(self, split)
        hf_split = getattr(self, f"{split}_split")
        if path:
            return path, hf_split
        if self.train.startswith("hf:") and split != "train":
            return self.train, hf_split
        return "", ""


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """``TrainConfig`` with fine-tuning defaults: ``epochs`` instead of steps, linear decay, an evaluation,
    a checkpoint and a best-checkpoint check after every epoch."""

    positive_fields: ClassVar[tuple[str, ...]] = ("global_batch_size", "log_every", "keep_last", "eval_batches",
                                                  "nonfinite_patience", "epochs")

    epochs: int = 3
    """Passes over the training examples (the paper: 5 for MNLI and SQuAD, 50 for XSUM and MSQG)."""
    steps: int = 0
    """0: epochs × steps per epoch (set when the run starts)."""
    global_batch_size: int = 32
    lr: float = 5e-5
    min_lr: float = 0.0
    schedule: Schedule = "linear"
    warmup_steps: int = 0
    log_every: int = 10
    eval_every: int = 0
    """0: after every epoch."""
    save_every: int = 0
    """0: after every epoch."""
    keep_last: int = 1
    eval_batches: int = 4
    best_metric: str = ""
    """Default: the task's main metric (accuracy, f1, rougeL...)."""
    best_mode: Literal["min", "max"] = "max"
    prefetch: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.steps, int) and self.steps >= 0, f"train.steps={self.steps!r}: must be an integer >= 0")


@dataclass
class FinetuneConfig:
    """The resolved configuration of one fine-tuning run."""

    init: str = ""
    """The pretrained checkpoint or run folder to start from."""
    task: TaskConfig = field(default_factory=TaskConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Resolved from ``init`` + the task's heads + ``model`` overrides when the run starts."""
    model_overrides: dict[str, Any] = field(default_factory=dict, repr=False)
    mean_row_tokens: int = field(default=0, repr=False)
    """Mean tokens of a training row (measured when the run starts; rows are padded per micro-batch)."""

    @property
    def seq_len(self) -> int:
        """Tokens per row as the trainer counts them for MFU: the measured mean, else the model's maximum."""
        return self.mean_row_tokens or self.model.max_seq_len

    def inputs(self) -> list[str]:
        """What the run reads (``init``, the example files, an instruction mixture's sets): the output guard's
        inputs."""
        mixture = [str(m.get("path") or "") for m in self.task.instruction.mixture if isinstance(m, dict)]
        return [self.init, self.data.train, self.data.valid, self.data.test, *mixture, self.train.init_from or ""]

    def to_dict(self) -> dict[str, Any]:
        """The sections as plain data (what ``config.yaml`` holds; ``model`` fully resolved)."""
        return {"init": self.init, "task": to_dict(self.task), "data": to_dict(self.data),
                "train": to_dict(self.train), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> FinetuneConfig:
        for key in data:
            if key not in SECTIONS:
                match = difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.0)
                raise ConfigError(f"{where}: unknown config key '{key}'; did you mean '{match[0]}'?")
        for key in SECTIONS[1:]:
            check(isinstance(data.get(key) or {}, dict), f"{where}: '{key}' must be a mapping of fields")
        model = dict(data.get("model") or {})
        for key in model:
            if key not in {f.name for f in dataclasses.fields(ModelConfig)}:
                raise ConfigError(f"unknown config key 'model.{key}'")
        return cls(init=str(data.get("init") or ""),
                   task=from_dict(TaskConfig, dict(data.get("task") or {}), "task"),
                   data=from_dict(FinetuneDataConfig, dict(data.get("data") or {}), "data"),
                   train=from_dict(FinetuneTrainConfig, dict(data.get("train") or {}), "train"),
                   model_overrides=model)


SAVED_BEFORE: dict[tuple[str, str], Any] = {
    (section, key): value for section in ("seq2seq", "instruction")
    for key, value in (("source_space", False), ("target_positions", "continue"))
}
"""Task fields added after fine-tuned runs were first saved, with the value that reproduces what a run saved
without them did (so an older checkpoint predicts as it was trained)."""


def saved_finetune_config(data: dict[str, Any], where: str) -> FinetuneConfig:
    """The config of a saved fine-tuning run (its ``config.yaml``), fields it predates set as it ran."""
    task = data.get("task")
    for (section, key), value in SAVED_BEFORE.items():
        if isinstance(task, dict) and isinstance(task.get(section), dict):
            task[section].setdefault(key, value)
    return FinetuneConfig.from_dict(data, where)


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Resolve a fine-tuning config: defaults < YAML file (with its bases) < ``--section.field value`` overrides."""
    return load_config(FinetuneConfig, path, overrides or [])
