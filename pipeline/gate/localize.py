"""Drift localization: where, inside an int8 model, the error against the float model starts.

Method (and why)
----------------
The XNNPACK delegate runs the whole transformer as one opaque blob: ExecuTorch's runtime exposes no
per-layer outputs from inside it, so the .pte itself cannot be probed layer by layer. What *can* be
probed is the model the .pte was lowered from: the PT2E-converted int8 graph (quantize/dequantize
pairs around every quantized op) run eagerly in PyTorch. It is rebuilt here with the recipe the
artifact records (`details.quantization`: scheme, embedding, modules kept float, calibration rows) and
the same calibration texts, and its logits are compared with the artifact's own runtime logits
("reproduction gap"): only when the two agree does the localization describe the artifact.

The model is exported once more as a *probe*: forward hooks on every module of interest (the word
embedding, the embedding block, the E->H mapping, every Linear and every attention block / layer of
every encoder call, pooler, classifier) make their inputs and outputs extra graph outputs. The same
quantizer then gives the same quantize/dequantize decisions (extra graph outputs add no annotation).
Both the float probe and the converted int8 probe run on the eval rows, and for every module call we
measure:

- accumulated error: relative L2 error ||y_q - y_f|| / ||y_f|| and cosine of the int8 path's output
  y_q against the float model's output y_f (the profile "error per layer", in execution order);
- local error: ||y_q - F(x_q)|| / ||F(x_q)||, where F is the *float* module applied to the int8
  path's own input x_q. This is the error the module's quantization adds by itself, independent of
  the error it receives from upstream (an accumulated curve cannot tell a layer that adds error from
  one that only passes on - or amplifies - its input's error). It covers the module's weight
  quantization and the quantize/dequantize of its input and output activations - including an output
  observer that the quantizer placed at the consumer (e.g. the word-embedding lookup's output, quantized
  as the input of the embedding block's add). A calibration set that never saw real text shows up here
  as a huge local error at the first activation whose range was estimated from it.

"Where the error starts" is the first module call, in execution order, whose local error reaches half
of the largest local error of any call: the first place a large error is introduced (modules finish
before the blocks that contain them, so a leaf Linear is named before its attention block when it
explains the error; the block is named when the error comes from its other ops - bmm, softmax, adds).
The ranking of modules by local error is what `--auto-fallback` keeps in float first
(`pipeline/gate/fallback.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.core.config import QuantizeConfig
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import cosine, max_abs_error, top1_agreement
from pipeline.model.albert import AlbertAttention, AlbertEmbeddings, AlbertLayer, ExportAlbert
from pipeline.lower.quantize import calibrate_and_convert
from pipeline.core.tokenization import Encoded

START_FRACTION = 0.5  # the error "starts" at the first call whose local error reaches this share of the largest
LEAF_TYPES = (nn.Linear, nn.Embedding)
BLOCK_TYPES = (AlbertEmbeddings, AlbertAttention, AlbertLayer)
PREFIX = "model."  # the probe wraps the export model as `model`
ROWS = 32  # eval rows the int8 and float models are compared on, module by module


def recipe_from_details(details: dict) -> QuantizeConfig:
    """How an int8 artifact was quantized: the recipe its manifest entry records as data."""
    settings = details.get("quantization")
    recipe = settings.get("recipe") if isinstance(settings, dict) else None
    if not isinstance(recipe, dict) or not str(settings.get("scheme", "")).startswith("pt2e-"):
        raise PipelineError(f"the artifact records no PT2E quantization recipe ({settings!r})")
    try:
        return QuantizeConfig(**recipe)
    except TypeError as err:
        raise PipelineError(f"the artifact's quantization recipe does not fit this version ({err})") from None


@dataclass
class Tap:
    name: str  # module FQN in the export model
    label: str  # readable: "layer 2: attention.query"
    kind: str  # module class name
    call: int  # 0-based call number of this module (shared layers are called once per layer)
    arg_slots: list  # per positional arg: ("out", k) an extra output, ("in", k) a graph input, None


_STATE: dict[int, dict] = {}


class _Probe(nn.Module):
    """The export model, returning (logits, *tapped tensors)."""

    def __init__(self, model: ExportAlbert, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        # Kept outside the module: torch.export restores module attributes changed while tracing.
        _STATE[id(self)] = {"taps": None, "recording": None, "layer": 0, "calls": {}}
        self._handles = []
        for name, module in model.named_modules():
            if _is_tapped(name, module):
                self._handles.append(module.register_forward_hook(self._hook(name)))
            if isinstance(module, AlbertLayer):
                self._handles.append(module.register_forward_pre_hook(self._count_layer))

    @property
    def state(self) -> dict:
        return _STATE[id(self)]

    @property
    def taps(self) -> list[Tap] | None:
        return self.state["taps"]

    def _count_layer(self, module, args):
        self.state["layer"] += 1

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.state["recording"] is not None:
                self.state["recording"].append((name, type(module).__name__, self.state["layer"], args, output))
        return hook

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, *inputs: torch.Tensor):
        state = self.state
        state.update(recording=[], layer=0, calls={})
        logits = self.model(*inputs)
        outputs: list[torch.Tensor] = [logits]
        slot_of: dict[int, tuple] = {id(t): ("in", k) for k, t in enumerate(inputs)}
        taps = []

        def slot(tensor):
            if not isinstance(tensor, torch.Tensor):
                return None
            if id(tensor) not in slot_of:
                slot_of[id(tensor)] = ("out", len(outputs))
                outputs.append(tensor)
            return slot_of[id(tensor)]

        for name, kind, layer, args, output in state["recording"]:
            call = state["calls"].get(name, 0)
            state["calls"][name] = call + 1
            out_slot = slot(output)
            arg_slots = [slot(a) for a in args]
            taps.append(Tap(name, _label(name, layer), kind, call, [out_slot, *arg_slots]))
        state["recording"] = None
        if state["taps"] is None:
            state["taps"] = taps
        return tuple(outputs)


def _is_tapped(name: str, module: nn.Module) -> bool:
    if not name:
        return False
    if isinstance(module, nn.Embedding):
        return name.endswith("word_embeddings")
    return isinstance(module, LEAF_TYPES + BLOCK_TYPES) or name == "recurrent"


def _label(name: str, layer: int) -> str:
    if ".albert_layers." in name:
        inner = name.split(".albert_layers.", 1)[1].split(".", 1)
        return f"layer {layer}: {inner[1] if len(inner) > 1 else 'output'}"
    if name.endswith("albert_layers") or name.endswith(".albert_layer_groups"):
        return f"layer {layer}"
    short = {"albert.embeddings": "embeddings (LayerNorm out)", "albert.encoder.embedding_hidden_mapping_in":
             "embedding mapping E->H", "albert.pooler": "pooler (dense)", "classifier": "classifier (logits)"}
    return short.get(name, name.removeprefix("albert."))


def _rows(encoded: Encoded, names: list[str], count: int):
    for index in range(min(count, len(encoded))):
        row = encoded.row(index)
        yield tuple(torch.from_numpy(np.ascontiguousarray(row[n])) for n in names)


def export_probe(model: ExportAlbert, example_inputs: tuple[torch.Tensor, ...], input_names: list[str]):
    probe = _Probe(model, input_names)
    with torch.no_grad():
        exported = torch.export.export(probe, example_inputs, strict=False)
    probe.remove_hooks()
    return probe, exported


def _forget(probe: "_Probe") -> None:
    _STATE.pop(id(probe), None)


def eager_logits(module, encoded: Encoded, input_names: list[str]) -> np.ndarray:
    outputs = []
    with torch.no_grad():
        for args in _rows(encoded, input_names, len(encoded)):
            out = module(*args)
            outputs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    return np.concatenate(outputs).astype(np.float32)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / max(float(torch.linalg.vector_norm(b.double())), 1e-30))


@dataclass
class Localization:
    profile: list[dict]  # per module call, execution order: label, module, kind, call, relative_error, cosine, local_error
    start: dict  # the profile entry where the error starts
    largest: dict  # the profile entry with the largest local error
    ranking: list[dict]  # unique modules by their largest local error: module, kind, local_error
    reproduction: dict  # reproduced int8 model vs the artifact's runtime logits
    rows: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"method": "per-module local and accumulated error of the PT2E int8 model run eagerly vs float "
                          "(see pipeline/gate/localize.py)",
                "start": self.start, "largest": self.largest, "ranking": self.ranking,
                "reproduction": self.reproduction, "rows": self.rows, "profile": self.profile, "notes": self.notes}

    def markdown(self) -> str:
        s, l = self.start, self.largest
        lines = [
            f"The error starts at **{s['label']}** (`{s['module']}`, {s['kind']}): its own int8 error is "
            f"{s['local_error']:.1%} relative (largest: {l['local_error']:.1%} at {l['label']}); accumulated error "
            f"there: {s['relative_error']:.1%} relative, cosine {s['cosine']:.4f}; at the logits: "
            f"{self.profile[-1]['relative_error']:.1%} relative.",
            "",
            f"Reproduced int8 model vs the artifact in its runtime ({self.rows} rows): max abs "
            f"{self.reproduction['max_abs_difference']:.3g}, cosine {self.reproduction['cosine']:.5f}, top-1 agreement "
            f"{self.reproduction['top1_agreement']:.3f}" + ("" if self.reproduction["faithful"] else
                                                             " - NOT faithful: the localization may not describe this file"),
            "",
            "| # | where | module | local err | accumulated err | cosine |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for index, entry in enumerate(self.profile):
            mark = " **<- starts**" if entry is s else ""
            lines.append(f"| {index} | {entry['label']}{mark} | {entry['kind']} | {entry['local_error']:.2%} | "
                         f"{entry['relative_error']:.2%} | {entry['cosine']:.5f} |")
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def localize(model: ExportAlbert, input_names: list[str], recipe: QuantizeConfig, calibration: Encoded,
             evaluation: Encoded, artifact_logits: np.ndarray | None = None) -> Localization:
    """Layer-by-layer comparison of the reproduced int8 model and the float model on the first ROWS eval rows."""
    if len(evaluation) == 0:
        raise PipelineError("the eval set is empty: nothing to localize on")
    rows = ROWS
    example_inputs = tuple(torch.from_numpy(np.ascontiguousarray(evaluation.row(0)[n])) for n in input_names)
    probe, exported = export_probe(model, example_inputs, input_names)
    taps = probe.taps
    _forget(probe)
    float_probe = exported.module()
    quant_probe = calibrate_and_convert(exported.module(), calibration, input_names, recipe, name_prefix=PREFIX)
    modules = dict(model.named_modules())
    count = min(rows, len(evaluation))
    if not taps:
        raise PipelineError("the probe recorded no module calls: nothing to localize")
    # per tap, summed over rows: |yq-yf|^2, |yf|^2, yq.yf, |yq|^2, |yq-F(xq)|^2, |F(xq)|^2
    acc = {i: [0.0] * 6 for i in range(len(taps))}
    quant_logits = []
    with torch.no_grad():
        for args in _rows(evaluation, input_names, count):
            f_out, q_out = float_probe(*args), quant_probe(*args)
            quant_logits.append(q_out[0].numpy())

            def get(outs, slot):
                if slot is None:
                    return None
                return args[slot[1]] if slot[0] == "in" else outs[slot[1]]

            for i, tap in enumerate(taps):
                yf, yq = get(f_out, tap.arg_slots[0]), get(q_out, tap.arg_slots[0])
                xq = [get(q_out, s) for s in tap.arg_slots[1:]]
                local = modules[tap.name](*xq)  # the float module on the int8 path's own input
                yf, yq, local = yf.double(), yq.double(), local.double()
                a = acc[i]
                a[0] += float(((yq - yf) ** 2).sum()); a[1] += float((yf ** 2).sum())
                a[2] += float((yq * yf).sum()); a[3] += float((yq ** 2).sum())
                a[4] += float(((yq - local) ** 2).sum()); a[5] += float((local ** 2).sum())
    profile = []
    for i, tap in enumerate(taps):
        a = acc[i]
        profile.append({
            "label": tap.label, "module": tap.name, "kind": tap.kind, "call": tap.call,
            "relative_error": float(np.sqrt(a[0] / max(a[1], 1e-30))),
            "cosine": float(a[2] / max(np.sqrt(a[1] * a[3]), 1e-30)),
            "local_error": float(np.sqrt(a[4] / max(a[5], 1e-30))),
        })
    largest = max(profile, key=lambda e: e["local_error"])
    start = next(e for e in profile if e["local_error"] >= START_FRACTION * largest["local_error"])
    best: dict[str, dict] = {}
    for entry in profile:
        if entry["module"] not in best or entry["local_error"] > best[entry["module"]]["local_error"]:
            best[entry["module"]] = {"module": entry["module"], "kind": entry["kind"], "local_error": entry["local_error"]}
    ranking = sorted(best.values(), key=lambda e: -e["local_error"])
    quant_logits = np.concatenate(quant_logits)
    reproduction = {"rows": count, "max_abs_difference": float("nan"), "cosine": float("nan"),
                    "top1_agreement": float("nan"), "faithful": False}
    notes = []
    if artifact_logits is not None:
        mine, theirs = quant_logits, np.asarray(artifact_logits[:count], dtype=np.float32)
        reproduction.update({
            "max_abs_difference": max_abs_error(mine, theirs),
            "cosine": cosine(mine, theirs),
            "top1_agreement": top1_agreement(mine, theirs),
        })
        # faithful: the reproduction is much closer to the artifact than the artifact is to the float model
        reference = eager_logits(float_probe, evaluation.__class__(evaluation.input_ids[:count], evaluation.attention_mask[:count],
                                                                   evaluation.token_type_ids[:count], 0), input_names)
        drift = float(np.abs(theirs - reference).mean())
        gap = float(np.abs(mine - theirs).mean())
        reproduction["mean_abs_difference"] = gap
        reproduction["artifact_mean_abs_error"] = drift
        reproduction["faithful"] = bool(gap <= 0.25 * drift or gap <= 1e-3)
        if not reproduction["faithful"]:
            notes.append("the reproduced int8 model differs from the artifact as much as the artifact differs from "
                         "the float model: the recorded recipe or calibration data may not be what built the file")
    return Localization(profile, start, largest, ranking, reproduction, count, notes)
