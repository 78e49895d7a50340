"""Eager PyTorch fp32 from a checkpoint folder: transformers' AlbertForSequenceClassification (`torch-hf`, the
float reference) or the project's export model (`torch-export`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runtimes.base import INPUT_NAMES, Runner, register


def set_threads(num_threads: int) -> None:
    import torch

    torch.set_num_threads(num_threads)


def load_eager(source: Path, kind: str):
    """One eager fp32 model from the checkpoint, as `load_checkpoint` builds it (weights cast to fp32)."""
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification

    from pipeline.model.albert import AlbertSpec, export_model_from_state
    from pipeline.model.checkpoint import _load_state

    state, _ = _load_state(source)
    prefixed = {k if k.startswith(("albert.", "classifier.", "recurrent.")) else f"albert.{k}": v.float()
                for k, v in state.items()}
    config = AlbertConfig.from_pretrained(str(source), local_files_only=True)
    if kind == "torch-export":
        return export_model_from_state(AlbertSpec.from_hf_config(config), prefixed).eval()
    model = AlbertForSequenceClassification(config)
    model.load_state_dict(prefixed, strict=False)
    return model.to(torch.float32).eval()


class TorchRunner(Runner):
    """A module already in memory (`module`), or loaded from a checkpoint folder by kind."""

    hf = False

    def __init__(self, path: Path, input_names: list[str] | None = None, num_threads: int | None = None, module=None):
        import torch

        self._torch = torch
        self.path = Path(path)
        self.module = (module if module is not None else load_eager(self.path, self.kind)).eval()
        self.input_names = list(input_names or INPUT_NAMES)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        t = {k: self._torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in self.input_names}
        with self._torch.inference_mode():
            if self.hf:
                return self.module(**t).logits.numpy().astype(np.float32)
            return self.module(*(t[k] for k in self.input_names)).numpy().astype(np.float32)


@register("torch-hf")
class HFRunner(TorchRunner):
    hf = True


@register("torch-export")
class ExportModelRunner(TorchRunner):
    pass
