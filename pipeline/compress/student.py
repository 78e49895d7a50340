"""The student ALBERT made from a BERT teacher: its spec, the factorized embedding (V x E, E x H), the shared layer
copied from one teacher layer, and the Hugging Face checkpoint + model card it is saved as (see compress.py)."""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.core.config import CompressConfig
from pipeline.core.errors import PipelineError
from pipeline.model.albert import AlbertSpec, ExportAlbert, group_for_layer
from pipeline.compress.batches import Batches, _run_logits
from pipeline.compress.distill import Runtime, layer_map

BERT_LAYER_MAP = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.dense",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "ffn",
    "output.dense": "ffn_output",
    "output.LayerNorm": "full_layer_layer_norm",
}
DEFAULT_GROUPS = 2  # with --share all: two shared layers (calls 0..2, 3..5 of six), chosen by measurement (README)
ATTENTION_PARTS = ("attention",)
FFN_PARTS = ("ffn", "ffn_output", "full_layer_layer_norm")



# -------------------------------------------------------------------------------------------- student
def student_spec(teacher_config, cfg: CompressConfig, num_labels: int) -> AlbertSpec:
    layers = cfg.layers or teacher_config.num_hidden_layers
    share = cfg.share
    if share not in ("all", "attention", "ffn", "none"):
        raise PipelineError(f"--share must be all, attention, ffn or none, not {share!r}")
    if cfg.groups not in (None, 1) and share != "all":
        raise PipelineError(f"--groups {cfg.groups} needs --share all (with --share {share} every call has its own layer)")
    if cfg.groups is not None and cfg.groups > layers:
        raise PipelineError(f"--groups {cfg.groups} exceeds the {layers} layer calls")
    groups = cfg.groups if cfg.groups is not None else min(DEFAULT_GROUPS, layers)
    if cfg.embedding_size > teacher_config.hidden_size:
        raise PipelineError(f"--embedding-size {cfg.embedding_size} exceeds the teacher's hidden size {teacher_config.hidden_size}")
    return AlbertSpec(
        vocab_size=teacher_config.vocab_size,
        embedding_size=cfg.embedding_size,
        hidden_size=teacher_config.hidden_size,
        num_hidden_layers=layers,
        num_hidden_groups=groups if share == "all" else layers,
        inner_group_num=1,
        num_attention_heads=teacher_config.num_attention_heads,
        intermediate_size=teacher_config.intermediate_size,
        hidden_act=teacher_config.hidden_act,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=teacher_config.type_vocab_size,
        layer_norm_eps=teacher_config.layer_norm_eps,
        num_labels=num_labels,
        recurrent=cfg.recurrent,
    )


def _helmert_rows(size: int) -> torch.Tensor:
    """(size-1) x size orthonormal rows, each orthogonal to the all-ones vector."""
    basis = torch.linalg.qr(torch.cat([torch.ones(size, 1), torch.eye(size)[:, : size - 1]], dim=1))[0]
    return basis[:, 1:].T.contiguous()


def factorize_embeddings(bert_embeddings, train: Batches, embedding_size: int, sample_tokens: int = 200_000) -> dict:
    """ALBERT E-dim tables and E -> H mapping from BERT's H-dim embeddings (see the module docstring)."""
    words = bert_embeddings.word_embeddings.weight.detach().double().cpu()
    positions = bert_embeddings.position_embeddings.weight.detach().double().cpu()
    types = bert_embeddings.token_type_embeddings.weight.detach().double().cpu()
    hidden = words.shape[1]
    sums = []
    for ids in train.ids:
        sums.append(words[torch.from_numpy(ids)] + positions[: len(ids)] + types[0])
    sums = torch.cat(sums)[:sample_tokens]
    centred = sums - sums.mean(-1, keepdim=True)
    if embedding_size >= hidden:
        basis = torch.eye(hidden, dtype=torch.float64)  # no factorization: identity basis, E = H
        rotation = torch.eye(hidden, dtype=torch.float64)
        if embedding_size > hidden:
            raise PipelineError("embedding size larger than the hidden size")
    else:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        basis = vh[: embedding_size - 1].T  # H x (E-1)
        rotation = _helmert_rows(embedding_size).double()  # (E-1) x E

    def project(table: torch.Tensor) -> torch.Tensor:
        return (table - table.mean(-1, keepdim=True)) @ basis @ rotation

    gamma = bert_embeddings.LayerNorm.weight.detach().double().cpu()
    beta = bert_embeddings.LayerNorm.bias.detach().double().cpu()
    e = embedding_size
    mapping = math.sqrt(hidden / e) * (gamma[:, None] * (basis @ rotation))  # H x E  (torch Linear weight)
    kept = float((centred @ basis).pow(2).sum() / centred.pow(2).sum())
    return {
        "word": project(words).float(), "position": project(positions).float(), "type": project(types).float(),
        "mapping_weight": mapping.float(), "mapping_bias": beta.float(), "energy_kept": kept,
    }


def _copy_layer(student_layer, teacher_layer, parts: tuple[str, ...] = ("attention", "ffn")) -> None:
    teacher_state = teacher_layer.state_dict()
    target = {}
    for bert_name, albert_name in BERT_LAYER_MAP.items():
        top = albert_name.split(".")[0]
        if (top == "attention" and "attention" not in parts) or (top != "attention" and "ffn" not in parts):
            continue
        for suffix in ("weight", "bias"):
            target[f"{albert_name}.{suffix}"] = teacher_state[f"{bert_name}.{suffix}"]
    student_layer.load_state_dict(target, strict=False)


def _spread(n_teacher: int, n_student: int) -> list[int]:
    """The teacher layer each unshared student layer starts as: the teacher's layers spread evenly over the calls,
    first and last kept (the identity when both have as many)."""
    return [round(i * (n_teacher - 1) / max(1, n_student - 1)) for i in range(n_student)]


def shared_layer_candidates(spec: AlbertSpec, n_teacher: int) -> list[tuple[int, ...]]:
    """Which teacher layers may initialise the shared layers, one per group: with one group any teacher layer; with
    several, each group's layer comes from the teacher layers its calls are distilled against (`layer_map`; every
    combination is a candidate)."""
    if spec.num_hidden_groups == 1:
        return [(layer,) for layer in range(n_teacher)]
    targets = [hidden_index - 1 for hidden_index in layer_map(spec.num_hidden_layers, n_teacher)]
    spans: dict[int, list[int]] = {}
    for call in range(spec.num_hidden_layers):
        group = group_for_layer(call, spec.num_hidden_layers, spec.num_hidden_groups)
        spans.setdefault(group, []).append(targets[call])
    return list(itertools.product(*(range(min(span), max(span) + 1) for span in spans.values())))


def build_student(spec: AlbertSpec, teacher, factorized: dict, shared_from: tuple[int, ...], share: str) -> ExportAlbert:
    """The student with embeddings, layers, pooler and classifier taken from the teacher; with sharing, shared
    layer (group) j starts as teacher layer shared_from[j]."""
    student = ExportAlbert(spec)
    bert = teacher.bert
    with torch.no_grad():
        emb = student.albert.embeddings
        emb.word_embeddings.weight.copy_(factorized["word"])
        emb.position_embeddings.weight.copy_(factorized["position"])
        emb.token_type_embeddings.weight.copy_(factorized["type"])
        emb.LayerNorm.weight.fill_(1.0)
        emb.LayerNorm.bias.zero_()
        student.albert.encoder.embedding_hidden_mapping_in.weight.copy_(factorized["mapping_weight"])
        student.albert.encoder.embedding_hidden_mapping_in.bias.copy_(factorized["mapping_bias"])
        teacher_layers = bert.encoder.layer
        groups = student.albert.encoder.albert_layer_groups
        n_teacher, n_student = len(teacher_layers), spec.num_hidden_layers
        spread = _spread(n_teacher, n_student)
        if share == "all":
            for group, layer in zip(groups, shared_from, strict=True):
                _copy_layer(group.albert_layers[0], teacher_layers[layer])
        else:
            for index, group in enumerate(groups):
                _copy_layer(group.albert_layers[0], teacher_layers[spread[index]])
            if share in ("attention", "ffn"):
                shared_part = "attention" if share == "attention" else "ffn"
                _copy_layer(groups[0].albert_layers[0], teacher_layers[shared_from[0]], (shared_part,))
                for group in groups[1:]:
                    layer = group.albert_layers[0]
                    if share == "attention":
                        layer.attention = groups[0].albert_layers[0].attention
                    else:
                        for name in FFN_PARTS:
                            setattr(layer, name, getattr(groups[0].albert_layers[0], name))
        if bert.pooler is not None:
            student.albert.pooler.weight.copy_(bert.pooler.dense.weight)
            student.albert.pooler.bias.copy_(bert.pooler.dense.bias)
        student.classifier.weight.copy_(teacher.classifier.weight)
        student.classifier.bias.copy_(teacher.classifier.bias)
    return student


def _agreement(student: ExportAlbert, probe: Batches, teacher_logits: torch.Tensor, rt: Runtime | None = None) -> float:
    student.eval()
    logits = _run_logits(lambda i, m: student(i, m), probe, rt=rt)
    return float(F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher_logits, -1), reduction="batchmean"))


# ----------------------------------------------------------------------------------------------- save
def albert_config(spec: AlbertSpec, label_names: list[str], pad_token_id: int):
    from transformers import AlbertConfig

    config = AlbertConfig(
        vocab_size=spec.vocab_size, embedding_size=spec.embedding_size, hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers, num_hidden_groups=spec.num_hidden_groups,
        inner_group_num=spec.inner_group_num, num_attention_heads=spec.num_attention_heads,
        intermediate_size=spec.intermediate_size, hidden_act=spec.hidden_act,
        max_position_embeddings=spec.max_position_embeddings, type_vocab_size=spec.type_vocab_size,
        layer_norm_eps=spec.layer_norm_eps, num_labels=spec.num_labels,
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        pad_token_id=pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    config.architectures = ["AlbertForSequenceClassification"]
    if spec.recurrent:
        config.recurrent = spec.recurrent
    return config


@dataclass
class SavedStudent:
    """What a compress run saves: the student, its label names and model card, the dtype its weights are stored in
    and the tokenizer's padding id."""

    student: ExportAlbert
    label_names: list[str]
    card: dict
    dtype: torch.dtype = torch.float16
    pad_token_id: int = 0


def save_checkpoint(saved: SavedStudent, tokenizer_dir: Path, out: Path) -> None:
    """Write the checkpoint (the student's spec as a Hugging Face AlbertConfig, its weights, the teacher's tokenizer
    files and the model card) to a temporary folder and move it into place."""
    from safetensors.torch import save_file

    card = saved.card
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        albert_config(saved.student.spec, saved.label_names, saved.pad_token_id).save_pretrained(str(tmp))
        state = {k: v.detach().to(saved.dtype).clone().contiguous() for k, v in saved.student.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "spiece.model"):
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, tmp / name)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "model_card.md").write_text(model_card_markdown(card))
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _gap_line(gap: dict) -> str:
    return (f"Test accuracy, student minus teacher: {gap['points']:+.1f} points, paired standard error "
            f"{gap['paired_standard_error_points']:.1f} ({gap['only_teacher_right']} texts only the teacher gets right, "
            f"{gap['only_student_right']} only the student, of {gap['rows']}).")


def _agreement_line(follows: dict) -> str:
    return (f"Agreement with the teacher on the dev texts and {follows['copies']} corrupted copies of each ({follows['rows']} texts, no "
            f"labels needed): top-1 {follows['top1_agreement']:.4f}, mean KL(teacher || student) {follows['kl']:.4f}.")


def _epoch_entry(entry: dict | str) -> str:
    if isinstance(entry, str):  # cards written before the per-epoch measures became a dict
        return f"dev accuracy {entry}"
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in entry.items())


def model_card_markdown(card: dict) -> str:
    t, s = card["teacher"], card["student"]
    lines = [
        f"# {card['name']}", "",
        f"ALBERT student compressed from `{t['source']}` by `{card['command']}`.", "",
        "| model | parameters | fp32 MB | stored MB | dev accuracy | test accuracy |", "|---|---:|---:|---:|---:|---:|",
        f"| teacher (fine-tuned) | {t['params']:,} | {t['fp32_bytes'] / 1e6:.1f} | | {_fmt(t.get('dev_accuracy'))} | {t['test_accuracy']:.4f} |",
        f"| student | {s['params']:,} | {s['fp32_bytes'] / 1e6:.1f} | {s['stored_bytes'] / 1e6:.1f} | {_fmt(s.get('dev_accuracy'))} | {s['test_accuracy']:.4f} |",
        f"| majority class | | | | | {card['majority_baseline']:.4f} |", "",
        f"Student/teacher parameters: {s['params'] / t['params']:.3f}. Settings: `{json.dumps(card['settings'])}`.", "",
        *([_gap_line(card["test_gap_to_teacher"]), ""] if "test_gap_to_teacher" in card else []),
        f"Recipe: {card.get('recipe', {}).get('distill', '')}. Data: `{json.dumps(card.get('data', {}))}`. "
        f"Seeds: `{json.dumps(card.get('seeds', {}))}`.", "",
        f"Wall time {card.get('seconds', 0):.0f} s (teacher {card.get('seconds_teacher', 0):.0f} s, distillation "
        f"{card.get('seconds_distill', 0):.0f} s) on `{json.dumps(card.get('hardware', {}))}`.", "",
        "Shared-layer choice (KL of student to teacher logits on up to 256 dev texts, lower is better): "
        + ", ".join(f"{k}: {v:.4f}" for k, v in card.get("shared_layer_probe", {}).items()), "",
        f"Embedding factorization kept {card['embedding_energy_kept']:.3f} of the centred embedding energy.", "",
        *([_agreement_line(s["dev_teacher_agreement"]), ""] if s.get("dev_teacher_agreement") else []),
        "Per-epoch distillation: " + "; ".join(_epoch_entry(e) for e in card.get("epochs_log", []))
        + (f"; the weights are epoch {card['kept_epoch']}'s" if card.get("kept_epoch") else ""), "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ run
