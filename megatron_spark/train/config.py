"""The config tree of a training run (``megatron-spark train|sft CONFIG key=value ...``).

Each section is owned by the component that reads it; every default lives here or in that
component's dataclass, never at a call site. ``examples/tiny_arith/*.yaml`` are complete examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_spark.data.countdown import CountdownConfig
from megatron_spark.data.datasets import FileTaskConfig
from megatron_spark.data.tasks import ArithmeticConfig
from megatron_spark.kernels.fused_head import TOKEN_CHUNK, VOCAB_CHUNK
from megatron_spark.model.builder import PrecisionConfig
from megatron_spark.platform import ParallelConfig
from megatron_spark.rollout.bridge import BridgeConfig
from megatron_spark.spark.config import SparkConfig
from megatron_spark.train.loss import LossConfig
from megatron_spark.train.metrics import MetricsConfig
from megatron_spark.train.optim import OptimConfig


@dataclass(frozen=True)
class ModelSection:
    """Where the weights and the tokenizer come from."""

    init: str = "preset:tiny-llama"
    """``preset:NAME`` (random weights from a built-in config), a Hugging Face model directory,
    or a megatron_spark checkpoint (a converted model or a training checkpoint step)."""
    tokenizer: str = "builtin:arith"
    """``builtin:arith`` (the committed sentencepiece model), a ``.model`` file, or a Hugging Face
    tokenizer directory. A preset's vocabulary is resized to this tokenizer's."""


@dataclass(frozen=True)
class VerifierConfig:
    """How a response is scored against the ground truth."""

    kind: Literal["math", "exact", "choice", "countdown", "function"] = "math"
    """``math``: math-verify equivalence; ``exact``: string match; ``choice``: multiple-choice
    letter; ``countdown``: the boxed expression reaches the target with the offered numbers (the
    answer is the problem's spec, ``22 using 3 5 7``); ``function``: a user function
    ``f(response, answer) -> float``."""
    box: Literal["last", "first"] = "last"
    """Which ``\\boxed{}`` of the response is the answer."""
    timeout_s: float = 5.0
    """Wall-clock limit per response; a timeout scores 0 and is counted."""
    function: str | None = None
    """``package.module:function`` for ``kind: function``."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s} is invalid; expected > 0 seconds")


@dataclass(frozen=True)
class TaskSection:
    """The problems to train and evaluate on."""

    kind: Literal["arithmetic", "countdown", "file"] = "arithmetic"
    """A built-in synthetic task (``arithmetic``: evaluate an expression; ``countdown``: reach a
    target with given numbers), or a jsonl/parquet dataset."""
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """Settings of the arithmetic task."""
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    """Settings of the Countdown task."""
    file: FileTaskConfig | None = None
    """Settings of a file dataset (required for ``kind: file``)."""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    """How responses are scored."""
    max_prompt_tokens: int = 256
    """Longest prompt (after the chat template); longer prompts are refused before training."""
    system_prompt: str | None = None
    """A system message put before every prompt the model sees (policy, judge and reflection) by
    the tokenizer's chat template (a Hugging Face tokenizer with a template is needed); None: the
    template's default (Qwen2.5's writes its own system line)."""

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens={self.max_prompt_tokens} is invalid; expected >= 1")
        if self.kind == "file" and self.file is None:
            raise ValueError("kind is 'file' but the 'file' section (train_path, ...) is missing")

    def source_config(self) -> ArithmeticConfig | CountdownConfig | FileTaskConfig:
        """The settings of the task ``kind`` names (what :func:`load_task` takes)."""
        return {"arithmetic": self.arithmetic, "countdown": self.countdown, "file": self.file}[self.kind]


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling from the policy."""

    engine: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers on this process's device (one engine per data-parallel replica);
    ``vllm``: vLLM colocated on every rank (CUDA, or vLLM's CPU build: tested here on the CPU,
    not on GPUs)."""
    num_samples_per_prompt: int = 8
    """Group size n of GRPO."""
    temperature: float = 1.0
    """Sampling temperature (the trainer's log-probs use the same)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 32
    """Longest response."""
    max_batch_sequences: int = 256
    """Sequences decoded together by the HF engine (bounds its KV-cache memory)."""
    vllm_gpu_memory_utilization: float = 0.5
    """Share of GPU memory vLLM may take while awake."""
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    """Weight sync from the trainer to the engine."""

    def __post_init__(self) -> None:
        if self.num_samples_per_prompt < 1:
            raise ValueError(f"num_samples_per_prompt must be >= 1, got {self.num_samples_per_prompt}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError("need temperature > 0, 0 < top_p <= 1 and max_new_tokens >= 1")
        if self.max_batch_sequences < 1:
            raise ValueError(f"max_batch_sequences={self.max_batch_sequences} is invalid; expected >= 1")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization} is invalid; expected in (0, 1]"
            )
        if self.engine == "vllm" and self.top_p < 1:
            # vLLM reports log-probs after top-p truncation; the trainer's are before it.
            raise ValueError("engine vllm needs top_p = 1 (its log-probs would not match the trainer's)")


@dataclass(frozen=True)
class GRPOConfig(LossConfig):
    """The policy-gradient objective: the loss's constants (clip range, KL, entropy:
    :class:`~megatron_spark.train.loss.LossConfig`) and how a step's rollouts become updates."""

    advantage: Literal["std", "mean"] = "std"
    """Group-normalised advantage: divide by the group's reward std, or only subtract the mean."""
    num_minibatches: int = 1
    """Optimizer steps per rollout batch (the batch's prompt groups are split evenly)."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """Log-probs of the sampling policy in the ratio: recomputed by the trainer before the first
    update (robust to engine numerics), or the engine's own (saves a forward pass)."""
    skip_zero_advantage: bool = True
    """Leave out of the forward and backward passes the RL samples (policy answers and SPARK's
    judge and reflection rollouts alike) whose advantage is 0 (a group whose rewards are all
    equal) when neither KL nor entropy is on: their tokens add exactly
    0 to the loss and its gradient. The loss is still divided by every response token of the
    step, so the update is the same up to float rounding; ``train/*`` statistics then cover the
    trained tokens only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_minibatches < 1:
            raise ValueError(f"num_minibatches={self.num_minibatches} is invalid; expected >= 1")


@dataclass(frozen=True)
class SFTSection:
    """What the supervised warm start (``megatron-spark sft``) trains on besides worked solutions."""

    judge_fraction: float = 0.0
    """Share of examples that are judge prompts (pointwise and pairwise, half each), answered in
    the judge format (re-derivation, then a boxed verdict)."""
    reflection_fraction: float = 0.0
    """Share of examples that are reflection prompts on a perturbed wrong attempt, answered by the
    worked solution."""
    judge_verdicts: Literal["random", "correct"] = "random"
    """``random``: coin-flip verdicts (teaches the format, not the skill: the arithmetic recipe's
    warm start); ``correct``: the correct verdicts, which after the task's worked check are the
    ones it implies (the Countdown recipe's warm start)."""
    practice_fraction: float = 0.0
    """Share of examples that exercise the skill the judge's check is made of, where the task has
    one (Countdown: evaluate an expression step by step, no target in sight); the check then
    evaluates rather than writes the result it expects."""
    practice_compare_fraction: float = 0.5
    """Share of practice exercises that end by setting the value beside a number, the value itself
    or a near miss (the check's comparison, ``14! 41!: different.`` for 14 against 41)."""
    own_wrong_answers_from_step: int = 0
    """From this step on, judge and reflection examples show the model's own wrong answers: each
    step samples one answer per problem (temperature 1, current weights) and a problem whose
    sample is boxed and wrong shows that sample instead of the task's perturbation. The worked
    check is then learnt on the mistakes the model makes, not only on made-up ones (a check that
    has only seen perturbations repeats the model's own slips). 0: never."""
    own_wrong_answers_every_steps: int = 1
    """Sample the model's own answers on every this-many-th step from
    ``own_wrong_answers_from_step`` (1: every step); the steps between show the task's
    perturbations. Only the problems whose example shows a candidate are sampled. Each sampling
    step costs a weight sync and a generation (on the tiny Countdown recipe about a third of the
    warm start's time when every step samples)."""

    def __post_init__(self) -> None:
        if not 0 <= self.practice_compare_fraction <= 1:
            raise ValueError(
                f"practice_compare_fraction={self.practice_compare_fraction} is invalid; expected 0 to 1"
            )
        if self.own_wrong_answers_every_steps < 1:
            raise ValueError(
                f"own_wrong_answers_every_steps={self.own_wrong_answers_every_steps} is invalid; expected >= 1"
            )
        if self.own_wrong_answers_from_step < 0:
            raise ValueError(
                f"own_wrong_answers_from_step={self.own_wrong_answers_from_step} is invalid; expected >= 0"
            )
        if (
            self.judge_fraction < 0
            or self.reflection_fraction < 0
            or self.practice_fraction < 0
            or self.judge_fraction + self.reflection_fraction + self.practice_fraction > 1
        ):
            raise ValueError(
                "judge_fraction, reflection_fraction and practice_fraction must be >= 0 and sum to at most 1"
            )


_ZERO = {
    "save_every_steps": "only at the end",
    "eval_every_steps": "only at the start and the end",
    "eval_num_problems": "no evaluation",
}


@dataclass(frozen=True)
class TrainerConfig:
    """The training loop."""

    num_steps: int = 100
    """Steps to run (GRPO: one rollout batch each; SFT: one optimizer step each)."""
    num_prompts_per_step: int = 32
    """Prompts per step over all data-parallel ranks (GRPO: each sampled n times; SFT: problems
    with worked solutions)."""
    micro_batch_tokens: int = 4096
    """Token budget of one packed micro-batch."""
    share_prompts: bool = True
    """Train a group's shared prompt once: its samples are packed as the prompt followed by each
    response, every response attending to that one copy. Same loss and gradients as packing each
    sample whole, up to float rounding; fewer tokens through the model (the tiny recipe: 27%).
    Needs megatron_spark's SDPA core attention: where Transformer Engine's attention is used
    (its packed kernels have no shared-prefix mask), samples are packed whole."""
    save_every_steps: int = 0
    """Checkpoint every k steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
    eval_every_steps: int = 0
    """Held-out evaluation every k steps (0: only at the start and the end)."""
    eval_num_problems: int = 200
    """Held-out problems per evaluation (the first ones of the split)."""
    eval_judge: bool = False
    """Also measure held-out judge (pointwise, pairwise) and reflection accuracy at each
    evaluation, on balanced items built from the initial policy's own wrong answers and from
    perturbed answers (SPARK runs; GRPO-only runs set it too, to compare)."""
    max_consecutive_bad_steps: int = 3
    """Steps with a non-finite loss or gradient are skipped; this many in a row stop the run."""
    token_chunk: int = TOKEN_CHUNK
    """Tokens per tile of the fused loss head (bounds its [tokens, vocab] tile memory)."""
    vocab_chunk: int = VOCAB_CHUNK
    """Vocabulary rows per tile of the fused loss head."""

    def __post_init__(self) -> None:
        for name in (
            "num_steps",
            "num_prompts_per_step",
            "micro_batch_tokens",
            "max_consecutive_bad_steps",
            "keep_checkpoints",  # 0 would delete the checkpoint just written
            "token_chunk",
            "vocab_chunk",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; expected >= 1")
        for name in ("save_every_steps", "eval_every_steps", "eval_num_problems"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; expected >= 0 (0: {_ZERO[name]})")


@dataclass(frozen=True)
class RunConfig:
    """A whole run."""

    run_dir: str | None = None
    """Where metrics, the resolved config and checkpoints go (default: runs/<command>-<time>)."""
    seed: int = 0
    """Seeds initialisation, sampling and data order."""
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    task: TaskSection = field(default_factory=TaskSection)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTSection = field(default_factory=SFTSection)
    spark: SparkConfig = field(default_factory=SparkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Metric loggers (TensorBoard, wandb) and console progress."""

    def __post_init__(self) -> None:
        # Each optimizer step of a GRPO update trains whole prompt groups (the DP split is
        # checked once the world size is known: Session).
        if self.grpo.num_minibatches > self.train.num_prompts_per_step:
            raise ValueError(
                f"grpo.num_minibatches={self.grpo.num_minibatches} is more than the step's "
                f"{self.train.num_prompts_per_step} prompt groups (train.num_prompts_per_step); "
                f"expected 1 to {self.train.num_prompts_per_step}"
            )
        if self.spark.judge_reward == "checked" and self.task.kind == "file":
            raise ValueError(
                "spark.judge_reward=checked needs a task with worked checks (task.kind: arithmetic "
                "or countdown); a file dataset's judge writes free-form reasoning: use judge_reward=verdict"
            )
