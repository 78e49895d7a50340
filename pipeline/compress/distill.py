"""Training machinery of `compress`: the epoch loop, losses, augmentation, checkpoints, device and data parallelism.

- The epoch loop (`train_epochs`, for the teacher's fine-tuning and the student's distillation alike):
  AdamW with warm-up and linear decay, length-bucketed shuffled batches seeded per epoch, a checkpoint
  after every epoch for --resume, and optionally the weights of the epoch best on dev.

- Intermediate-layer distillation: the student's shared layer is called L times; after call i its hidden
  states are compared with the teacher's layer `layer_map[i]` (MSE of per-token standardised states, i.e.
  2 * (1 - Pearson correlation) per token) and, optionally, its attention distributions (KL, teacher ->
  student, per head and valid query token). Attention distributions are recomputed from the layer's input
  hidden states and its query/key projections, for teacher and student alike, so no model code changes.
- Teacher-labelled augmentation (TinyBERT-style, without a second model): each augmented copy of a text
  masks, replaces (by a train-frequency-weighted vocabulary token) or deletes a span of word pieces with a
  small probability; the teacher's logits on the copy are its soft label and their argmax its hard label.
  Each copy is a function of (seed, epoch, example, copy) only, so it does not depend on batch order,
  on the number of processes, or on where a resumed run restarted.
- Data parallelism under `torchrun` (env WORLD_SIZE > 1): every process builds the same batches and takes
  rows rank::world of each; losses are sums over rows divided by the global batch size (times the world
  size, which DistributedDataParallel's gradient mean divides out), so a step equals the single-process
  step up to floating-point summation order.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import CompressConfig
from pipeline.core.console import Progress
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # batches.py imports Runtime from here
    from pipeline.compress.batches import Batches

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------- device / dist
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA (bf16 when supported, else fp16)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def make_runtime(device: str) -> Runtime:
    """--device auto|cpu|cuda, and torchrun's RANK/WORLD_SIZE/LOCAL_RANK when present."""
    if device not in ("auto", "cpu", "cuda"):
        raise PipelineError(f"--device must be auto, cpu or cuda, not {device!r}")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise PipelineError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    use_cuda = has_cuda and device in ("auto", "cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dev, amp = torch.device("cpu"), None
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(dev, rank, world, amp)


def wrap_parallel(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    if not rt.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)


def hardware() -> dict:
    """CPU model and the ISA flags that matter for inference kernels; GPU name when one is used."""
    info: dict = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "cpu" not in info:
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "isa_flags" not in info:
                flags = set(line.split(":", 1)[1].split())
                wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                          "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
                info["isa_flags"] = [f for f in wanted if f in flags]
    except OSError:
        import platform

        info["cpu"] = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


# ------------------------------------------------------------------------------------------- epoch loop
def epoch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length (lengths plus uniform noise of 8 pieces, sorted), in a shuffled order."""
    noisy = lengths + rng.uniform(0, 8, size=len(lengths))
    index = np.argsort(noisy, kind="stable")
    batches = [index[i : i + batch_size] for i in range(0, len(index), batch_size)]
    rng.shuffle(batches)
    return batches


# Called as EPOCH_HOOK(what, epoch) after each finished (and checkpointed) epoch; tests use it to interrupt a run.
EPOCH_HOOK: Callable[[str, int], None] | None = None


@dataclass
class TrainContext:
    """What every training phase of one compress run reads: the settings, where it reports, the device and
    processes, and the folder of its per-epoch checkpoints (None: none are written)."""

    cfg: CompressConfig
    log: Log
    rt: Runtime
    work: Path | None = None


@dataclass
class Phase:
    """One run of the epoch loop: the teacher's fine-tuning or the student's distillation.

    `checkpoint` is a file name in the context's work folder, `fingerprint` what a resumed checkpoint must
    match, `copies` the augmented copies of each text an epoch, `seed` the batch order's (None: cfg.seed);
    `evaluate` returns an epoch's measures and `keep_best` keeps the weights of the epoch best on dev."""

    what: str
    epochs: int
    lr: float
    checkpoint: str | None = None
    fingerprint: str = ""
    copies: int = 0
    seed: int | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    keep_best: bool = False
    epochs_log: list[dict] = field(default_factory=list)  # evaluate()'s measures, one entry an epoch


def train_epochs(model, rows_loss: Callable, train: Batches, phase: Phase, ctx: TrainContext) -> int:
    """AdamW with linear warm-up/decay over rows_loss(net, examples, copies, epoch) -> per-row losses.

    An epoch serves every train text once plus `copies` augmented copies of it (item j: example j % n, copy
    j // n), in length-bucketed batches shuffled by a generator seeded with (seed, epoch): an epoch does not
    depend on the ones before it, which is what makes --resume exact. Under torchrun each process takes
    rows rank::world of every batch (see the module docstring). After each epoch the model, optimizer, scheduler
    and torch RNG state are written atomically to the phase's checkpoint (when it has one and the context a work
    folder); --resume starts after the last one. evaluate() returns the epoch's measures ({"dev_accuracy": ...,
    ...}), appended to phase.epochs_log. With keep_best, the weights of the epoch with the highest dev_accuracy
    (the later one on a tie) are loaded at the end. Returns the epoch whose weights the model holds.
    """
    cfg, log, rt = ctx.cfg, ctx.log, ctx.rt
    what, epochs, copies, epochs_log = phase.what, phase.epochs, phase.copies, phase.epochs_log
    checkpoint = ctx.work / phase.checkpoint if ctx.work is not None and phase.checkpoint else None
    n = len(train)
    lengths = np.tile(np.array([len(x) for x in train.ids]), copies + 1)
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    steps = epochs * per_epoch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=phase.lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype == torch.float16 else None
    first = 1
    best: dict | None = None  # {"epoch", "value", "model"} of the best epoch so far (keep_best only)
    if cfg.resume and checkpoint is not None:
        state = load_checkpoint(checkpoint, phase.fingerprint)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            epochs_log[:] = state["epochs_log"]
            best = state.get("best")
            first = state["epoch"] + 1
            log(f"  {what}: resuming after epoch {state['epoch']}/{epochs} from {checkpoint}")
    net = wrap_parallel(model, rt)
    model.train()
    for epoch in range(first, epochs + 1):
        rng = np.random.default_rng([cfg.seed if phase.seed is None else phase.seed, epoch])
        total = 0.0
        progress = Progress(per_epoch, f"  {what} epoch {epoch}/{epochs}", log, enabled=rt.main,
                            interval=cfg.progress_seconds)
        for step, idx in enumerate(epoch_order(lengths, cfg.batch_size, rng), 1):
            examples, copy = idx % n, idx // n
            mine, weight = slice(rt.rank, None, rt.world), 1.0
            if len(idx[mine]) == 0:  # fewer rows than processes: take part with a zero weight
                mine, weight = slice(0, 1), 0.0
            with rt.autocast():
                rows = rows_loss(net, examples[mine], copy[mine], epoch)
            loss = rows.float().sum() * (weight * rt.world / len(idx))
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            total += float(loss.detach())  # this process's estimate of the batch mean
            progress.update(1, f"loss {total / step:.4f}")
        seconds = progress.close()
        message = f"  {what} epoch {epoch}/{epochs}: loss {total / per_epoch:.4f} ({seconds:.0f} s, {seconds / per_epoch:.2f} s/batch)"
        if phase.evaluate is not None:
            model.eval()
            measures = phase.evaluate()
            epochs_log.append(measures)
            value = measures["dev_accuracy"]
            message += ", " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in measures.items())
            model.train()
            if phase.keep_best and (best is None or value >= best["value"]):
                best = {"epoch": epoch, "value": value,
                        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        log(message)
        if checkpoint is not None and rt.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                         "epochs_log": list(epochs_log), "best": best, "fingerprint": phase.fingerprint}, checkpoint)
        rt.barrier()
        if EPOCH_HOOK is not None:
            EPOCH_HOOK(what, epoch)
    model.eval()
    if best is not None and best["epoch"] != epochs:
        model.load_state_dict(best["model"])
        log(f"  {what}: keeping epoch {best['epoch']} (dev accuracy {best['value']:.4f}, the best of {epochs})")
        return best["epoch"]
    return epochs


# ------------------------------------------------------------------------------------------- checkpoints
def save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(handle)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise PipelineError("--resume: this checkpoint was written by a run with other settings or data; "
                            "run without --resume to start over", path)
    return state


# ------------------------------------------------------------------------------------------ augmentation
@dataclass
class Augmenter:
    """Per-(epoch, example, copy) deterministic corruption of word-piece id sequences."""

    prob: float
    mask_id: int | None
    vocab_ids: np.ndarray  # candidate replacement ids (train word pieces)
    vocab_p: np.ndarray  # their frequencies
    seed: int

    @classmethod
    def from_train(cls, ids: list[np.ndarray], prob: float, mask_id: int | None, special: set[int], seed: int):
        counts: dict[int, int] = {}
        for row in ids:
            for t in row[1:-1].tolist():
                if t not in special:
                    counts[t] = counts.get(t, 0) + 1
        keys = np.array(sorted(counts), dtype=np.int64)
        freq = np.array([counts[k] for k in keys], dtype=np.float64)
        freq = freq ** 0.75  # flatten like word2vec's negative sampling: rarer words show up too
        return cls(prob, mask_id, keys, freq / freq.sum(), seed)

    def __call__(self, ids: np.ndarray, epoch: int, example: int, copy: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7919, epoch, example, copy])
        body = ids[1:-1]  # keep [CLS] ... [SEP]
        if len(body) == 0 or len(self.vocab_ids) == 0:
            return ids
        action = rng.random(len(body))
        out = body.copy()
        chosen = action < self.prob
        kind = rng.integers(0, 3, len(body))  # 0 mask, 1 replace, 2 delete (a span of 1-3 pieces)
        replace = chosen & ((kind == 1) | ((kind == 0) & (self.mask_id is None)))
        out[replace] = rng.choice(self.vocab_ids, size=int(replace.sum()), p=self.vocab_p)
        if self.mask_id is not None:
            out[chosen & (kind == 0)] = self.mask_id
        keep = np.ones(len(body), dtype=bool)
        for start in np.flatnonzero(chosen & (kind == 2)):
            keep[start : start + int(rng.integers(1, 4))] = False
        if not keep.any():
            keep[0] = True
        return np.concatenate([ids[:1], out[keep], ids[-1:]])


# ---------------------------------------------------------------------------------------------- losses
def attention_log_probs(query: torch.nn.Linear, key: torch.nn.Linear, hidden: torch.Tensor,
                        additive_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax(QK^T / sqrt(d) + mask): [B, heads, S, S], recomputed from a layer's input."""
    batch, seq, width = hidden.shape
    size = width // heads
    q = query(hidden).view(batch, seq, heads, size).transpose(1, 2)
    k = key(hidden).view(batch, seq, heads, size).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(size) + additive_mask
    return torch.log_softmax(scores.float(), dim=-1)


def hidden_loss_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over valid tokens of MSE between per-token standardised hidden states."""
    s = F.layer_norm(student.float(), student.shape[-1:])
    t = F.layer_norm(teacher.float(), teacher.shape[-1:])
    per_token = (s - t).pow(2).mean(-1)
    m = mask.float()
    return (per_token * m).sum(-1) / m.sum(-1).clamp_min(1)


def attention_loss_rows(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row KL(teacher || student) of attention distributions, mean over heads and valid query tokens."""
    kl = (teacher_logp.exp() * (teacher_logp - student_logp))
    kl = kl.masked_fill(mask[:, None, None, :] == 0, 0.0).sum(-1)  # [B, heads, S]
    m = mask.float()[:, None, :]
    return (kl * m).sum(-1).mean(-1) / m.sum(-1).squeeze(1).clamp_min(1)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based, as in hidden_states) that the student's call i (1-based) is compared with."""
    return [max(1, round((i + 1) * teacher_layers / student_layers)) for i in range(student_layers)]
