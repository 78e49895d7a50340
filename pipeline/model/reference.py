"""The float reference's logits (transformers' eager fp32 ALBERT) on the eval rows: what every
artifact is judged against."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.core.console import progress
from pipeline.model.checkpoint import LoadedModel
from pipeline.core.shapes import real_lengths
from pipeline.core.tokenization import Encoded


def reference_logits(model: LoadedModel, encoded: Encoded, batch_size: int = 32) -> np.ndarray:
    """The float reference's logits (HF eager fp32) for every encoded row.

    Rows are batched by length and each batch is cut after its last real token: masked padding changes no
    logit (its attention weight is exactly 0), and the reference costs a third less on real reviews.
    """
    lengths = real_lengths(encoded.attention_mask)
    order = np.argsort(lengths, kind="stable")
    logits = None
    with torch.no_grad():
        for start in progress(range(0, len(order), batch_size), desc="  float reference", unit="batch"):
            rows = order[start : start + batch_size]
            width = max(int(lengths[rows].max()), 1)
            ids, mask, types = (torch.from_numpy(np.ascontiguousarray(a[rows, :width]))
                                for a in (encoded.input_ids, encoded.attention_mask, encoded.token_type_ids))
            if model.reference is model.export_model:
                out = model.reference(ids, mask, types)
            else:
                out = model.reference(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            if logits is None:
                logits = np.zeros((len(order), out.shape[-1]), dtype=np.float32)
            logits[rows] = out.numpy()
    return logits if logits is not None else np.zeros((0, 0), dtype=np.float32)


def sweep_reference(model, rows: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The float reference (HF eager, or the export model when it is the reference) on each sweep row."""
    outs = []
    with torch.no_grad():
        for row in rows:
            t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in row.items()}
            if model.reference is model.export_model:
                out = model.reference(t["input_ids"], t["attention_mask"], t["token_type_ids"])
            else:
                out = model.reference(**t).logits
            outs.append(out.numpy().reshape(1, -1))
    return np.concatenate(outs).astype(np.float32)
