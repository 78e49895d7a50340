"""The model stage: a local Hugging Face ALBERT checkpoint -> the float reference and the export model."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import PipelineError
from pipeline.core.provenance import remember
from pipeline.model.albert import AlbertSpec, ExportAlbert, check_spec, export_model_from_state
from pipeline.core.tokenization import load_tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedModel:
    model_dir: Path
    spec: AlbertSpec
    reference: torch.nn.Module  # transformers' AlbertForSequenceClassification (or ExportAlbert for GRU variants)
    export_model: ExportAlbert
    tokenizer: object
    label_names: list[str]
    source_sha256: str
    num_parameters: int

    @property
    def reference_kind(self) -> str:
        return type(self.reference).__name__


def _read_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise PipelineError("no config.json: not a Hugging Face checkpoint directory", model_dir)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"config.json is not valid JSON ({err})", config_path) from None
    if not isinstance(config, dict):
        raise PipelineError(f"config.json holds a JSON {type(config).__name__}, not an object", config_path)
    model_type = config.get("model_type")
    if model_type in ("bert", "distilbert", "roberta", "mobilebert"):
        raise PipelineError(
            f"is a {model_type!r} checkpoint, not ALBERT; turn it into one first with "
            f"`python -m pipeline compress --teacher {model_dir}`",
            config_path,
        )
    if model_type != "albert":
        raise PipelineError(f"model_type is {model_type!r}; this pipeline takes ALBERT checkpoints", config_path)
    return config


def _load_state(model_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            break
    else:
        raise PipelineError(f"no weights file ({' or '.join(WEIGHT_FILES)})", model_dir)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), path
        return torch.load(path, map_location="cpu", weights_only=True), path
    except Exception as err:  # corrupt or truncated files raise many different errors
        raise PipelineError(f"weights cannot be read, the file is corrupt or truncated ({type(err).__name__})", path) from None


def hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_checkpoint(model_dir: str | Path, max_length: int | None = None) -> LoadedModel:
    """Load and check a local ALBERT sequence-classification checkpoint; nothing is downloaded."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PipelineError("model directory not found", model_dir)
    _read_config(model_dir)  # a clear error for a missing or non-ALBERT config.json, before the weights load
    state, weights_path = _load_state(model_dir)
    tokenizer = load_tokenizer(model_dir)

    from transformers import AlbertConfig, AlbertForSequenceClassification

    config = AlbertConfig.from_pretrained(str(model_dir), local_files_only=True)
    spec = AlbertSpec.from_hf_config(config)
    try:
        check_spec(spec)
    except ValueError as err:
        raise PipelineError(str(err), model_dir / "config.json") from None
    if max_length is not None and max_length < 2:
        raise PipelineError(f"max_length {max_length} is too small: [CLS] and [SEP] alone need 2 positions")
    if max_length is not None and max_length > spec.max_position_embeddings:
        raise PipelineError(
            f"max_length {max_length} exceeds the model's max_position_embeddings {spec.max_position_embeddings}",
            model_dir / "config.json",
        )
    prefixed = {k if k.startswith(("albert.", "classifier.", "recurrent.")) else f"albert.{k}": v for k, v in state.items()}
    try:
        export_model = export_model_from_state(spec, prefixed)
    except (KeyError, RuntimeError) as err:
        raise PipelineError(f"weights do not fit the config ({str(err).splitlines()[0][:200]})", weights_path) from None

    if spec.recurrent is None:
        reference = AlbertForSequenceClassification(config)
        missing, _ = reference.load_state_dict({k: v.float() for k, v in prefixed.items()}, strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        if missing:
            raise PipelineError(f"weights missing for {missing[:3]}", weights_path)
        reference.eval()
    else:
        # transformers has no recurrent ALBERT: the project's eager module is the float reference.
        reference = export_model

    label_names = [config.id2label[i] for i in range(config.num_labels)]
    largest_id = max(tokenizer.get_vocab().values())
    if largest_id >= spec.vocab_size:
        raise PipelineError(
            f"tokenizer ids go up to {largest_id} but the model's vocab_size is {spec.vocab_size}", model_dir
        )
    source_sha256 = hash_files([model_dir / "config.json", weights_path])
    remember(source_sha256, model_dir)  # validate/bench find it again here; the manifest names it by hash only
    return LoadedModel(
        model_dir=model_dir,
        spec=spec,
        reference=reference,
        export_model=export_model,
        tokenizer=tokenizer,
        label_names=label_names,
        source_sha256=source_sha256,
        num_parameters=export_model.num_parameters(),
    )
