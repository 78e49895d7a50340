"""Tokenized labeled texts for compress: batches, the dev split, logits over batches, accuracy."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from pipeline.core.console import Progress
from pipeline.core.data import LabeledTexts
from pipeline.core.errors import PipelineError
from pipeline.compress.distill import Runtime

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

    def by_length(self, batch_size: int) -> list[np.ndarray]:
        """Batches of similar length, shortest first (for evaluation; training shuffles: distill.epoch_order)."""
        index = np.argsort(np.array([len(x) for x in self.ids]), kind="stable")
        return [index[i : i + batch_size] for i in range(0, len(index), batch_size)]


def _run_logits(model: Callable, batches: Batches, batch_size: int = 64, rt: Runtime | None = None,
                progress: Progress | None = None) -> torch.Tensor:
    """Logits of every text, in the texts' order (computed in length-sorted batches)."""
    device = rt.device if rt is not None else torch.device("cpu")
    results = {}
    with torch.no_grad(), (rt.autocast() if rt is not None else contextlib.nullcontext()):
        for idx in batches.by_length(batch_size):
            ids, mask, _ = batches.batch(idx)
            logits = model(ids.to(device), mask.to(device)).float().cpu()
            for row, i in enumerate(idx):
                results[int(i)] = logits[row]
            if progress is not None:
                progress.update(len(idx))
    if progress is not None:
        progress.close()
    return torch.stack([results[i] for i in range(len(batches))]) if results else torch.zeros(0, 2)


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(-1).numpy() == labels).mean())


def _subset(batches: Batches, rows: np.ndarray) -> Batches:
    part = Batches.__new__(Batches)
    part.ids, part.labels = [batches.ids[i] for i in rows], batches.labels[rows]
    return part


def split_dev(train: Batches, fraction: float, seed: int) -> tuple[Batches, Batches | None]:
    """A development split carved out of train (seeded, stratified by label) for decisions; the rest trains."""
    if not 0.0 <= fraction < 1.0:
        raise PipelineError(f"--dev-fraction must be in [0, 1), not {fraction}")
    if fraction == 0.0:
        return train, None
    rng = np.random.default_rng([seed, 104729])
    dev_rows = []
    for label in np.unique(train.labels):
        rows = np.flatnonzero(train.labels == label)
        take = int(round(len(rows) * fraction))
        dev_rows.extend(rng.choice(rows, take, replace=False).tolist())
    dev_rows = np.array(sorted(dev_rows), dtype=np.int64)
    if len(dev_rows) == 0 or len(dev_rows) == len(train):
        raise PipelineError(f"--dev-fraction {fraction} leaves no dev or no train texts ({len(train)} texts)")
    rest = np.setdiff1d(np.arange(len(train)), dev_rows)
    return _subset(train, rest), _subset(train, dev_rows)


def _pad(seqs: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in seqs)
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, x in enumerate(seqs):
        ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
