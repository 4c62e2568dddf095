"""``TrainConfig`` and ``RunConfig``: everything ``biglm pretrain`` needs, loaded from YAML + overrides.

A run config has four sections::

    model:      ModelConfig fields, or ``preset: biglm-136m`` plus overrides; ``vocab_size: auto`` (or no
                ``vocab_size``) takes the padded vocabulary size of the tokenizer
    objective:  ObjectiveConfig fields, or ``preset: biglm-no-attn`` (see ``OBJECTIVE_PRESETS``) plus overrides
    data:       DataConfig fields (tokenizer, sources, anneal_sources, seq_len, cache_dir, ...)
    train:      TrainConfig fields (below)

A top-level ``base: other.yaml`` (path relative to the file) is read first and deep-merged under the file.
Resolution is defaults < base < YAML < ``--section.field value`` overrides; unknown keys are one-line
errors naming the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from biglm.config import ModelConfig
from biglm.configurable import deep_merge, from_dict, load_config, to_dict
from biglm.data.config import DataConfig
from biglm.errors import ConfigError, check
from biglm.families import FAMILIES
from biglm.objectives import OBJECTIVE_PRESETS, ObjectiveConfig
from biglm.train.schedule import SCHEDULES, Schedule

SECTIONS = ("model", "objective", "data", "train")
PSEUDO_KEYS = ("model.preset", "objective.preset")
BOOKKEEPING_FIELDS = ("train.progress", "train.tensorboard", "train.prefetch", "train.device", "train.peak_flops",
                      "train.log_every", "train.keep_last", "train.async_checkpoint", "data.num_workers",
                      "data.cache_dir")
"""Run-config keys that change how a run is watched or where it works, not what it trains: configs that
differ only in these describe the same run (``biglm compare`` reuses it; a resume may change them)."""
"""Keys of a run config that are no dataclass field: the presets the sections start from."""


@dataclass
class GrowthEvent:
    """Grow the model after ``step`` optimizer steps (``train.growth``; see ``biglm.train.growth``).

    Sizes are integers or multiples of the size at that point (``"2x"``); unset ones stay."""

    step: int = 0
    """Grow after this many optimizer steps (the checkpoint and metrics of this step hold the grown model)."""
    layers: str | None = None
    """New number of layers, e.g. ``2x`` (progressive stacking) or ``8``."""
    hidden_size: str | None = None
    """New hidden size (function-preserving initialisation; heads grow with it)."""
    intermediate_size: str | None = None
    """New SwiGLU inner size (default: scaled with the hidden size)."""
    depth_order: Literal["stack", "interleave"] = "stack"
    """stack: a copy of the whole stack on top (StackBERT); interleave: each layer repeated in place."""
    depth_init: Literal["copy", "zero"] = "copy"
    """copy: progressive stacking; zero: the new layers' output projections start at zero (exact)."""
    mapping: Literal["balanced", "random"] = "balanced"
    """Which units new units copy: balanced (exact for whole multiples) or random (the paper's draws)."""
    noise: float = 0.0
    """Relative size of zero-sum symmetry-breaking noise on the split weights (keeps the function)."""
    optimizer: Literal["carry", "reset"] = "carry"
    """carry: AdamW's moments expanded with the weights (gradient-scaled, see ``biglm.grow.expand``);
    reset: a fresh AdamW state for the grown model."""

    def __post_init__(self) -> None:
        check(isinstance(self.step, int) and self.step > 0, f"train.growth step={self.step!r}: must be > 0")
        check(any(v is not None for v in (self.layers, self.hidden_size, self.intermediate_size)),
              f"train.growth at step {self.step}: give layers, hidden_size or intermediate_size")
        check(self.optimizer in ("carry", "reset"),
              f"train.growth optimizer={self.optimizer!r}: expected carry or reset")


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, parallelism, logging and checkpointing of a pre-training run.

    Batch sizes count packed rows of ``data.seq_len`` tokens. ``global_batch_size`` rows make one
    optimizer step over all ranks; each rank runs forward/backward on ``micro_batch_size`` rows at a
    time, so gradient accumulation is ``global_batch_size / (micro_batch_size · world_size)`` micro-steps
    (must divide exactly). ``micro_batch_size: 0`` means ``global_batch_size / world_size`` (no accumulation).
    """

    positive_fields: ClassVar[tuple[str, ...]] = ("steps", "global_batch_size", "log_every", "keep_last",
                                                  "eval_batches", "nonfinite_patience")

    steps: int = 1000
    """Optimizer steps of the whole run."""
    global_batch_size: int = 8
    """Packed rows per optimizer step, over all ranks."""
    micro_batch_size: int = 0
    """Rows per forward pass on each rank (0: global_batch_size / world size, no accumulation)."""
    lr: float = 6e-4
    """Peak learning rate (reached at the end of warm-up)."""
    min_lr: float = 6e-5
    """Final learning rate of the decay (WSD and cosine)."""
    schedule: Schedule = "wsd"
    """Learning-rate schedule after warm-up: WSD (warmup-stable-decay), cosine, linear, or constant."""
    warmup_steps: int = 100
    """Linear warm-up from lr/warmup_steps to lr over this many steps."""
    decay_fraction: float = 0.2
    """WSD: the final fraction of ``steps`` over which the LR decays linearly to ``min_lr`` (paper: 0.2)."""
    anneal_data: bool = True
    """WSD: switch the data stream to ``data.anneal_sources`` when the decay starts (if any are given)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.01
    """AdamW decay of weight matrices; norms and biases are never decayed."""
    decay_embeddings: bool = True
    """Also decay the (tied) embedding matrix, as Megatron-DeepSpeed (the paper's code) does."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping; the norm is still logged)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: fp32 on CPU, bf16 autocast on CUDA. Weights and optimizer state stay fp32."""
    compile: bool = False
    """``torch.compile`` every block (the LM head stays eager: its row count changes every step)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (``torch.utils.checkpoint``) to save memory."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: DDP (replicated weights) or FSDP2 (sharded, for 1.3B/3.5B)."""
    checkpoint_format: Literal["full", "sharded"] = "full"
    """full: rank 0 gathers weights and optimizer state into ``model.safetensors`` + ``optimizer.pt``;
    sharded: every rank writes its shards (``torch.distributed.checkpoint``), resumable on any number of
    ranks; ``biglm consolidate`` writes the single-file model for export, generate and evaluate."""
    async_checkpoint: bool = False
    """With ``checkpoint_format: sharded``: copy the state to CPU memory and write it in a background thread
    while training goes on; the checkpoint is completed (checksums, ``meta.json``) at the next save or the end."""
    prefetch: int = 2
    """Steps of masked micro-batches prepared ahead in a background thread (0: inline, no thread)."""
    device: str = "auto"
    """auto: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    init_from: str | None = None
    """Start from the weights of this checkpoint or run folder (e.g. ``biglm import-hf --from-llama`` output)
    with a fresh optimizer and schedule; ``model`` must describe the same shapes. Ignored by ``--resume``."""
    seed: int = 0
    """Seeds the model init, dropout and the objective's masking (per row, see ``biglm.train.loop``)."""
    log_every: int = 10
    """Write a metrics row every this many steps."""
    eval_every: int = 0
    """Evaluate on the validation split every this many steps (0: only at the end)."""
    eval_batches: int = 20
    """Micro-batches per rank in each evaluation (the same masked rows every time)."""
    best_metric: str = ""
    """Keep the weights of the best evaluation by this metrics key (e.g. ``val_loss``, ``val_rougeL``) in
    ``RUN_DIR/best``; empty: no best checkpoint."""
    best_mode: Literal["min", "max"] = "min"
    """Whether a lower (``min``) or higher (``max``) ``best_metric`` is better."""
    patience: int = 0
    """Stop early after this many evaluations without a better ``best_metric`` (0: never stop early)."""
    save_every: int = 1000
    """Save a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = 3
    """Keep the newest K intact checkpoints (damaged or unfinished ones never count)."""
    nonfinite: Literal["skip", "stop"] = "skip"
    """A step whose loss or gradient norm is NaN/Inf: ``skip`` it (no update; the step counter, schedule and
    data position advance) or ``stop`` at once. See ``biglm.train.guard``."""
    nonfinite_patience: int = 10
    """With ``nonfinite: skip``, stop after this many consecutive skipped steps."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; default: a table for H100/A100 bf16, else a measured matmul peak."""
    tensorboard: bool = True
    """Also write TensorBoard scalars to RUN_DIR/tensorboard."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA)."""
    growth: list[GrowthEvent] = field(default_factory=list)
    """Grow the model during training (BatGPT's Algorithm 1 as one run), e.g.
    ``[{step: 1000, layers: 2x}]``; see ``biglm.train.growth``."""

    def __post_init__(self) -> None:
        for name in self.positive_fields:
            v = getattr(self, name)
            check(isinstance(v, int) and v > 0, f"train.{name}={v!r}: must be a positive integer")
        for name in ("micro_batch_size", "warmup_steps", "eval_every", "save_every", "prefetch", "patience"):
            v = getattr(self, name)
            check(isinstance(v, int) and v >= 0, f"train.{name}={v!r}: must be an integer >= 0")
        check(math.isfinite(self.lr) and self.lr > 0, f"train.lr={self.lr}: must be a finite number > 0")
        check(0 <= self.min_lr <= self.lr, f"train.min_lr={self.min_lr}: must be in [0, lr={self.lr}]")
        check(0.0 <= self.decay_fraction <= 1.0, f"train.decay_fraction={self.decay_fraction}: must be in [0, 1]")
        check(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0,
              f"train.beta1/beta2=({self.beta1}, {self.beta2}): must be in [0, 1)")
        check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0")
        check(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}: must be >= 0")
        check(self.peak_flops is None or self.peak_flops > 0, f"train.peak_flops={self.peak_flops}: must be > 0")
        *names, last = SCHEDULES
        check(self.schedule in SCHEDULES, f"train.schedule={self.schedule!r}: expected {', '.join(names)} or {last}")
        check(self.best_mode in ("min", "max"), f"train.best_mode={self.best_mode!r}: expected min or max")
        check(not self.patience or bool(self.best_metric),
              f"train.patience={self.patience}: early stopping needs train.best_metric")
        check(self.precision in ("auto", "fp32", "bf16"),
              f"train.precision={self.precision!r}: expected auto, fp32 or bf16")
        check(self.parallel in ("ddp", "fsdp"), f"train.parallel={self.parallel!r}: expected ddp or fsdp")
        check(self.checkpoint_format in ("full", "sharded"),
              f"train.checkpoint_format={self.checkpoint_format!r}: expected full or sharded")
        check(not self.async_checkpoint or self.checkpoint_format == "sharded",
              "train.async_checkpoint=true: needs train.checkpoint_format=sharded")
        steps = [e.step for e in self.growth]
        check(steps == sorted(set(steps)) and all(s < self.steps for s in steps),
              f"train.growth steps {steps}: must increase and stay below train.steps={self.steps}")
        check(self.nonfinite in ("skip", "stop"), f"train.nonfinite={self.nonfinite!r}: expected skip or stop")

    def grad_accum(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank; raises ``ConfigError`` if the sizes do not divide."""
        micro = self.micro_batch_size or self.global_batch_size // world_size
        per_step = micro * world_size
        check(micro > 0 and self.global_batch_size % per_step == 0,
              f"train.global_batch_size={self.global_batch_size}: must be a multiple of micro_batch_size "
              f"({micro}) × world size ({world_size}) = {per_step}")
        return self.global_batch_size // per_step

    def micro_batch(self, world_size: int) -> int:
        """Rows per forward pass on each rank."""
        return self.micro_batch_size or self.global_batch_size // world_size


@dataclass
class RunConfig:
    """The resolved configuration of one pre-training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vocab_size_auto: bool = False
    """True when ``model.vocab_size`` is to be taken from the tokenizer (not saved: the saved config pins it)."""

    def __post_init__(self) -> None:
        check(self.data.seq_len <= self.model.max_seq_len,
              f"data.seq_len={self.data.seq_len}: exceeds model.max_seq_len={self.model.max_seq_len}")
        families = self.objective.families
        check(self.objective.name in FAMILIES[self.model.family].objectives,
              f"model.family={self.model.family!r} does not fit objective '{self.objective.name}' (it trains "
              f"{' or '.join(repr(f) for f in families)}); set model.family or leave it out to take "
              f"{families[0]!r}")

    @property
    def seq_len(self) -> int:
        """Tokens per packed row."""
        return self.data.seq_len

    def inputs(self) -> list[str]:
        """What the run reads (data sources, tokenizer, ``train.init_from``): the output guard's inputs."""
        return [*(s.path for s in self.data.sources), self.data.tokenizer, self.train.init_from or ""]

    def to_dict(self) -> dict[str, Any]:
        """The four sections as plain data (what ``config.yaml`` holds)."""
        return {"model": self.model.to_dict(), "objective": to_dict(self.objective),
                "data": self.data.to_dict(), "train": to_dict(self.train)}

    def with_vocab_size(self, vocab_size: int) -> RunConfig:
        """This config with ``model.vocab_size`` pinned (as resolved from the tokenizer)."""
        model = dataclasses.replace(self.model, vocab_size=vocab_size)
        return dataclasses.replace(self, model=model, vocab_size_auto=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from a mapping with the sections ``model``, ``objective``, ``data``, ``train``."""
        for key in data:
            if key not in SECTIONS:
                match = difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.0)
                raise ConfigError(f"{where}: unknown config key '{key}'; did you mean '{match[0]}'?")
        for key in SECTIONS:
            check(isinstance(data.get(key) or {}, dict), f"{where}: '{key}' must be a mapping of fields")
        model = dict(data.get("model") or {})
        vocab = model.pop("vocab_size", "auto")
        auto = vocab is None or vocab == "auto"
        if not auto:
            model["vocab_size"] = vocab
        objective = _objective(dict(data.get("objective") or {}))
        model.setdefault("family", objective.families[0])  # the objective decides unless the model section does
        family = FAMILIES.get(model["family"])  # an unknown name is ModelConfig's error, below
        if family is not None and family.positions_2d:
            model.setdefault("position_encoding", "rope-2d")  # the RoPE form of 2D positions by default
        return cls(model=ModelConfig.from_dict(model), objective=objective,
                   data=DataConfig.from_dict(dict(data.get("data") or {})),
                   train=from_dict(TrainConfig, dict(data.get("train") or {}), "train"),
                   vocab_size_auto=auto)


def _objective(data: dict[str, Any]) -> ObjectiveConfig:
    preset = data.pop("preset", None)
    if preset is None:
        return from_dict(ObjectiveConfig, data, "objective")
    if preset not in OBJECTIVE_PRESETS:
        raise ConfigError(f"objective.preset={preset!r}: expected one of {', '.join(OBJECTIVE_PRESETS)}")
    return from_dict(ObjectiveConfig, deep_merge(to_dict(OBJECTIVE_PRESETS[preset]), data), "objective")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a run config: defaults < YAML file (with its bases) < ``--section.field value`` overrides."""
    return load_config(RunConfig, path, overrides or [], allowed=PSEUDO_KEYS)
