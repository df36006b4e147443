"""The one typed configuration of a training run, its YAML presets and `--set key=value` overrides.

Defaults are R1-AQA's recipe. Presets live in `cluster/configs/*.yaml` and name only what differs;
`load_config("tiny-cpu", ["learner.optimizer.lr=1e-3"])` gives the resolved, validated `RunConfig`,
which the driver writes to the run directory as `config.yaml` before anything runs and never
changes. Each fact has one key: sampling (temperature, completion budget) and the prompt style are
read by rollout, learner, reward and serving alike; the learner gets them by wiring
(`learner_config`), the workers get seeds derived from the one `train.seed` (`sub_seed`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from families import FAMILY_NAMES
from learner.config import LearnerConfig, LoraSettings, LossConfig, OptimizerConfig, ParallelConfig
from reward.rewards import AccuracyRule, RewardWeights
from reward_models.spec import RewardModelSpec
from rollout.prompt import PromptConfig
from rollout.sampling import SamplingConfig
from rollout.vllm_engine import EngineConfig

PRESETS = Path(__file__).parent / "configs"


def cache_dir() -> Path:
    """Where generated assets (tiny model, synthetic data) live: $AUDIO_GRPO_CACHE or ~/.cache/audio-grpo."""
    return Path(os.environ.get("AUDIO_GRPO_CACHE", Path.home() / ".cache" / "audio-grpo"))


@dataclass(frozen=True)
class ModelConfig:
    path: str = "Qwen/Qwen2-Audio-7B-Instruct"  # an HF folder on disk (no hub here)
    # When `path` does not exist: build a tiny model there ("tiny" or "small") and give it a format
    # warm start of `warm_start_steps` on the training data (0 = none). Done by the CLI before a run.
    build_if_missing: Literal["", "tiny", "small"] = ""
    warm_start_steps: int = 0
    # The model family (families/: qwen2-audio, qwen2.5-omni, audioflamingo3). "" = the one the
    # folder's config.json names. It picks the family of a model built when missing (qwen2-audio
    # when ""); for a folder on disk it must agree with config.json (the weights decide the class).
    family: str = ""


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/avqa-train.jsonl"  # AVQA JSON lines or an MMAU JSON list (told by content)
    eval: str = "data/mmau-test-mini.json"
    audio_root: str = ""  # where audio paths resolve; "" = each data file's folder
    eval_audio_root: str = ""
    strict: bool = False  # stop before training if any row is invalid (default: skip and report)
    eval_max_items: int = 0  # 0 = all
    # When the files do not exist: write a synthetic set of this many items there (0 = never).
    synthetic_items: int = 0
    synthetic_tasks: str = ""  # comma-separated question tasks; "" = all; "caption": the caption set


@dataclass(frozen=True)
class RolloutConfig:
    num_workers: int = 1
    gpus_per_worker: float = 1.0  # 0 on CPU
    cpus_per_worker: float = 1.0
    # A custom Ray resource every worker's bundle asks a sliver of: the workers go to the nodes that
    # advertise it (`ray start --resources '{"rollout_node": 8}'`). "" = anywhere.
    node_resource: str = ""
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass(frozen=True)
class LearnerGroupConfig:
    num_ranks: int = 1
    gpus_per_rank: float = 1.0  # 0 on CPU
    cpus_per_rank: float = 1.0
    node_resource: str = ""  # as rollout.node_resource, for the learner ranks
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass(frozen=True)
class RewardConfig:
    weights: RewardWeights = field(default_factory=RewardWeights)
    # r1aqa: R1-AQA's accuracy rule (math-verify's symbolic check, then the tag match); exact: the
    # tag match alone (see reward/rewards.py).
    accuracy_rule: AccuracyRule = "r1aqa"
    num_actors: int = 1
    models: tuple[RewardModelSpec, ...] = ()  # model rewards (reward_models/), each weighted in the total


@dataclass(frozen=True)
class SyncConfig:
    """The learner -> rollout weight transfer (vLLM's weight-transfer API; see README)."""

    bucket_mb: int = 256  # the unit streamed: gathered, cast, sent and freed one after another
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 600.0  # every transfer call and collective; the learner's whole send: 4x + 60


@dataclass(frozen=True)
class ServeConfig:
    """The live endpoint inside the training job (`train --serve`): one more receiver of every
    weight update, on its own placement bundle the size of a rollout worker's. Its bearer token
    comes from --token or $AUDIO_GRPO_TOKEN, never from this file (config.yaml is written to disk)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000


@dataclass(frozen=True)
class HardwareConfig:
    """What the run will be given, for the memory plan (`audio-grpo plan`; `train` checks it before
    any actor starts). 0 = this machine's: host memory, and GPU 0's memory and count."""

    nodes: int = 1
    gpus_per_node: int = 0
    gpu_gib: float = 0.0
    host_gib: float = 0.0
    check: bool = True  # train refuses a config the plan says cannot fit


@dataclass(frozen=True)
class TrainConfig:
    questions_per_step: int = 16  # R1-AQA: 8 GPUs x 1 question x 2 accumulation steps; x n completions
    max_steps: int = 1000
    eval_every: int = 100  # 0 = never
    save_every: int = 100  # 0 = only at the end
    keep_checkpoints: int = 0  # the newest N complete checkpoints stay, older ones go (0 = keep all)
    adv_eps: float = 1e-4
    flip_advantages: bool = False  # a control experiment: the learner climbs the wrong way
    # Generate step k+1's completions while the learner updates on step k's. The rollouts then come
    # from the policy one update behind; the loss corrects for it with the importance ratio
    # pi_theta / pi_rollout per token (the rollout engine's log-probs), clipped to
    # [1 - epsilon_low, 1 + epsilon_high] as in PPO. Needs sampling temperature 1.
    overlap_rollout: bool = False
    seed: int = 42  # the one seed: data order, model building, learner and engines (derived)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_retries: int = 3  # re-runs of one step's work after a worker dies
    # Deadlines of the driver's waits: a worker past one is replaced (rollout, reward) or the run
    # stops with an error naming the setting (learner). Weight updates: sync.timeout_s.
    generate_timeout_s: float = 1800.0
    reward_timeout_s: float = 300.0
    learner_timeout_s: float = 3600.0


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerGroupConfig = field(default_factory=LearnerGroupConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def sub_seed(seed: int, role: str, index: int = 0) -> int:
    """A seed for one consumer of the run's seed (`role`, e.g. "rollout", and its index): distinct
    per consumer, the same on every run with the same `train.seed`."""
    return (seed * 1_000_003 + zlib.crc32(role.encode()) + index) % 2**31


def weight_transfer_backend(config: RunConfig) -> str:
    """vLLM weight-transfer backend: `sync.backend`, or with "auto" NCCL between GPUs, else gloo."""
    if config.sync.backend != "auto":
        return config.sync.backend
    return "nccl" if config.rollout.gpus_per_worker else "gloo"


def learner_config(config: RunConfig) -> LearnerConfig:
    """What the learner reads, wired from the run's one place for each fact."""
    section, parallel = config.learner, config.learner.parallel
    steps = section.optimizer.schedule_steps or config.train.max_steps
    if parallel.cpu_threads < 0 and config.train.overlap_rollout:  # engines generate meanwhile,
        threads = max(1, (os.cpu_count() or 1) - config.rollout.num_workers)  # one thread each
        parallel = dataclasses.replace(parallel, cpu_threads=threads)  # (every core: 1.6-5x slower)
    return LearnerConfig(
        optimizer=dataclasses.replace(section.optimizer, schedule_steps=steps),
        loss=section.loss,
        parallel=parallel,
        lora=section.lora,
        sampling=config.sampling,
        prompt=config.prompt,
        seed=sub_seed(config.train.seed, "learner"),
    )


class ConfigError(ValueError):
    pass


def _moved_keys() -> dict[str, str]:
    """Keys of older configs -> where the setting lives now (or why it is gone)."""
    moved = {
        "rollout.sampling": "sampling (one section for rollout, learner and serving)",
        "rollout.engine.seed": "train.seed (each engine gets a derived seed)",
        "learner.optim": "learner.optimizer, learner.loss and learner.parallel",
        "learner.optim.temperature": "sampling.temperature (the learner reads it from there)",
        "learner.optim.max_completion_length": "sampling.max_tokens (the learner reads it from there)",
        "learner.optim.thinking": "prompt.thinking",
        "learner.optim.seed": "train.seed (the learner gets a derived seed)",
        "learner.optim.total_steps": "learner.optimizer.schedule_steps (0 = train.max_steps)",
        "reward.weights.thinking": "prompt.thinking",
    }
    for field_ in SamplingConfig.__dataclass_fields__:
        moved[f"rollout.sampling.{field_}"] = f"sampling.{field_}"
    moved["rollout.sampling.seed"] = "train.seed (engines get derived seeds)"
    for section, cls in (("optimizer", OptimizerConfig), ("loss", LossConfig), ("parallel", ParallelConfig)):
        for field_ in cls.__dataclass_fields__:
            moved.setdefault(f"learner.optim.{field_}", f"learner.{section}.{field_}")
    return moved


MOVED_KEYS = _moved_keys()
_RENAMED_VALUES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return []
    keys = []
    for key, value in tree.items():
        keys.append(f"{prefix}{key}")
        keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def check_moved_keys(tree: dict[str, Any]) -> None:
    """A clear error for every key an older config used that has moved or gone."""
    found = [key for key in _dotted_keys(tree) if key in MOVED_KEYS]
    # Name the leaves ("learner.optim.lr") rather than their section when both are there.
    leaves = [k for k in found if not any(other.startswith(k + ".") for other in found)]
    if leaves:
        raise ConfigError(
            "this config uses keys that have moved: "
            + "; ".join(f"{key} -> {MOVED_KEYS[key]}" for key in leaves)
        )


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(kind, value, where)
    if origin is Literal:
        if value not in typing.get_args(kind):
            hint = (
                f" ({value!r} is now spelled {_RENAMED_VALUES[value]!r})" if value in _RENAMED_VALUES else ""
            )
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(kind))}{hint}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:  # the first that takes the value (4 -> int, "auto" -> Literal)
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err).removeprefix(f"{where}: "))
        raise ConfigError(f"{where}: " + "; or ".join(errors))
    if origin is tuple and typing.get_args(kind)[-1] is Ellipsis:  # tuple[X, ...]: a YAML list
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(kind)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        return tuple(_coerce(v, a, where) for v, a in zip(value, typing.get_args(kind), strict=True))
    if kind is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-6" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind in (int, str, bool) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(f'{where}{k}' for k in unknown)}; known: {sorted(names)}")
    base = cls()
    kwargs = {}
    for name in names:
        if name in values:
            current = getattr(base, name)
            if dataclasses.is_dataclass(current) and isinstance(values[name], dict):
                merged = {**dataclasses.asdict(current), **values[name]}
                kwargs[name] = _build(type(current), merged, f"{where}{name}.")
            else:
                kwargs[name] = _coerce(values[name], hints[name], f"{where}{name}")
    return dataclasses.replace(base, **kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    preset = PRESETS / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    raise ConfigError(f"no config {name_or_path!r}: give a YAML path or a preset name ({', '.join(known)})")


def _check_tensor_parallel(rollout) -> None:
    """An engine over several GPUs: its bundle holds them all, its workers run in their own processes."""
    tp, gpus = rollout.engine.tensor_parallel_size, rollout.gpus_per_worker
    if tp > 1 and rollout.engine.in_process:
        raise ConfigError(f"rollout.engine.tensor_parallel_size {tp} runs vLLM's workers in their own "
                          "processes: set rollout.engine.in_process: false")  # fmt: skip
    if tp > 1 and gpus and gpus != tp:
        raise ConfigError(f"rollout.gpus_per_worker ({gpus:g}) must equal rollout.engine.tensor_parallel_"
                          f"size ({tp}): each rollout worker's bundle holds its engine's GPUs")  # fmt: skip


def validate(config: RunConfig) -> RunConfig:
    """Checks across sections, made before anything starts."""
    train = config.train
    if config.model.family and config.model.family not in FAMILY_NAMES:
        raise ConfigError(f"model.family {config.model.family!r}: one of {', '.join(FAMILY_NAMES)}")
    if train.questions_per_step % config.learner.num_ranks:
        raise ConfigError(
            f"train.questions_per_step ({train.questions_per_step}) must be a multiple of "
            f"learner.num_ranks ({config.learner.num_ranks})"
        )
    if train.overlap_rollout and config.sampling.temperature != 1.0:
        raise ConfigError(
            "train.overlap_rollout corrects with the rollout engine's log-probs, which vLLM reports at "
            f"temperature 1; sampling.temperature is {config.sampling.temperature}"
        )
    _check_tensor_parallel(config.rollout)
    parallel = config.learner.parallel
    if config.learner.lora.rank and parallel.zero_stage == 3:
        raise ConfigError("learner.lora with learner.parallel.zero_stage 3 is not supported yet: use 0-2")
    if parallel.reference_offload and parallel.zero_stage != 3:
        raise ConfigError("learner.parallel.reference_offload needs learner.parallel.zero_stage: 3")
    return config


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    check_moved_keys(tree)
    return validate(_build(RunConfig, tree))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset or YAML file, then `key=value` overrides (values parsed as YAML: 1e-6, true, [a, b])."""
    tree = yaml.safe_load(resolve_preset(name_or_path).read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    return config_from_dict(tree)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def expand_path(path: str) -> Path:
    """A configured path with `{cache}`, `~` and $VARIABLES expanded."""
    return Path(os.path.expanduser(os.path.expandvars(path.replace("{cache}", str(cache_dir())))))
