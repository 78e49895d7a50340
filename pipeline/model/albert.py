"""An export-friendly ALBERT: the same math as transformers' AlbertForSequenceClassification, written so
that every op of the transformer lowers into one XNNPACK delegate (each item below is what delegation needs):

- the additive attention mask is computed once, as float, from the int mask (no int64 scalar arithmetic);
- attention is 3-D `bmm` with the heads folded into the batch dimension (4-D `matmul` leaves `expand_copy` ops
  outside the delegate);
- LayerNorm is written out (mean via a global average pool) because `native_layer_norm` is never delegated;
- GELU is `nn.GELU` (XNNPACK computes the exact form; tanh-GELU is written out with delegable ops);
- tables are sliced (`weight[:S]`), [CLS] is `x[:, 0:1]`.

Module and parameter names mirror Hugging Face's, so an HF state dict loads as is. Layer sharing is
kept: one `AlbertLayer` object serves every layer that uses it, so `torch.export` stores it once.
An optional recurrent front end (GRU, see `recurrent.py`) runs over the embeddings before the encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Any

import torch
from torch import nn

from pipeline.model.recurrent import make_recurrent

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
MASK_VALUE = -1e4  # additive mask; exp(-1e4) underflows to exactly 0 in fp32 like HF's finfo.min


@dataclass
class AlbertSpec:
    """The architecture fields of an HF AlbertConfig that the export model needs."""

    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_hidden_layers: int
    num_hidden_groups: int
    inner_group_num: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    num_labels: int
    recurrent: str | None = None  # None or "gru": this project's recurrent variant

    @classmethod
    def from_hf_config(cls, config: Any) -> "AlbertSpec":
        return cls(
            vocab_size=config.vocab_size,
            embedding_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_hidden_groups=config.num_hidden_groups,
            inner_group_num=config.inner_group_num,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            num_labels=config.num_labels,
            recurrent=getattr(config, "recurrent", None),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerNorm(nn.Module):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the last dim, written with delegable ops."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self._forward_2d(x)
        # Worked in 4-D: a mean over (-2, -1) of x[..., None] is a global average pool for XNNPACK, while
        # mean(-1) and squeeze are not delegated and would split the graph into many delegates.
        x4 = x.unsqueeze(-1)
        centred = x4 - x4.mean((-2, -1), keepdim=True)
        var = (centred * centred).mean((-2, -1), keepdim=True)
        normed = centred / torch.sqrt(var + self.eps)
        # -1 for the sequence dim: XNNPACK refuses a view whose shape holds a symbolic size (dynamic length)
        normed = normed.view(x.shape[0], -1, x.shape[-1])
        return normed * self.weight + self.bias

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        """[S, size] (the ONNX -> onnx2tf dynamic-length form): the means are matmuls with a constant 1/size
        column, which onnx2tf converts at any S (its conversion of ReduceMean went wrong there)."""
        average = torch.full((1, x.shape[-1]), 1.0 / x.shape[-1], dtype=x.dtype)
        centred = x - nn.functional.linear(x, average)
        var = nn.functional.linear(centred * centred, average)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


class TanhGELU(nn.Module):
    """GELU's tanh approximation (HF `gelu_new`) with delegable ops: x*x*x instead of pow(x, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
        return 0.5 * x * (1.0 + torch.tanh(inner))


class PolynomialGELU(nn.Module):
    """Exact GELU with erf written as Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) from basic ops.

    For converters without an exact-GELU or Erf op (TFLite has no Erf builtin): since sign(x) * x = |x|,
    x * Phi(x) = 0.5 x + 0.5 |x| erf(|x| / sqrt 2), which needs only abs, exp, mul, add and div.
    """

    P = 0.3275911
    A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.abs(x) * (1.0 / math.sqrt(2.0))
        t = 1.0 / (1.0 + self.P * z)
        a1, a2, a3, a4, a5 = self.A
        poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
        erf_abs = 1.0 - poly * torch.exp(-(z * z))
        return 0.5 * x + 0.5 * torch.abs(x) * erf_abs


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return TanhGELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"hidden_act {name!r} is not supported; supported: {SUPPORTED_ACTIVATIONS}")


class AlbertEmbeddings(nn.Module):
    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.embedding_size)
        self.position_embeddings = nn.Embedding(spec.max_position_embeddings, spec.embedding_size)
        self.token_type_embeddings = nn.Embedding(spec.type_vocab_size, spec.embedding_size)
        self.LayerNorm = LayerNorm(spec.embedding_size, spec.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        words = self.word_embeddings(input_ids)
        positions = self.position_embeddings.weight[:seq_len].view(1, -1, self.position_embeddings.embedding_dim)
        if token_type_ids is None:
            types = self.token_type_embeddings.weight[0:1].view(1, 1, -1)
        else:
            types = self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(words + positions + types)


class AlbertAttention(nn.Module):
    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.num_heads = spec.num_attention_heads
        self.head_size = spec.hidden_size // spec.num_attention_heads
        self.query = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.key = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.value = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.dense = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.LayerNorm = LayerNorm(spec.hidden_size, spec.layer_norm_eps)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        x = x.view(batch, seq, self.num_heads, self.head_size).transpose(1, 2)
        return x.reshape(batch * self.num_heads, seq, self.head_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        if hidden.dim() == 2:
            return self._forward_flat(hidden, additive_mask)
        batch, seq, width = hidden.shape
        if batch == 1:
            return self._forward_one(hidden, additive_mask)
        scale = 1.0 / math.sqrt(self.head_size)
        query = self._split_heads(self.query(hidden) * scale)
        key = self._split_heads(self.key(hidden))
        value = self._split_heads(self.value(hidden))
        scores = torch.bmm(query, key.transpose(1, 2))  # [B*heads, S, S]
        scores = scores.view(batch, self.num_heads, seq, seq) + additive_mask
        probs = torch.softmax(scores, dim=-1).view(batch * self.num_heads, seq, seq)
        context = torch.bmm(probs, value)
        context = context.view(batch, self.num_heads, seq, self.head_size).transpose(1, 2).reshape(batch, seq, width)
        return self.LayerNorm(hidden + self.dense(context))

    def _forward_one(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """Batch 1, written for a dynamic sequence length in ExecuTorch: every view names at most one
        symbolic size (as -1), scores stay 3-D [heads, S, S], the mask is [1, 1, S] (the export's form)."""
        width = hidden.shape[-1]
        scale = 1.0 / math.sqrt(self.head_size)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(-1, self.num_heads, self.head_size).transpose(0, 1)  # [heads, S, hs]

        query = heads(self.query(hidden) * scale)
        key = heads(self.key(hidden))
        value = heads(self.value(hidden))
        scores = torch.bmm(query, key.transpose(1, 2)) + additive_mask.view(1, 1, -1)
        context = torch.bmm(torch.softmax(scores, dim=-1), value)
        context = context.transpose(0, 1).contiguous().view(1, -1, width)
        return self.LayerNorm(hidden + self.dense(context))

    def _forward_flat(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """Batch 1 with 2-D hidden states [S, width]: the form onnx2tf converts with a dynamic sequence axis
        (3-D only in the batched attention core)."""
        width = hidden.shape[-1]
        scale = 1.0 / math.sqrt(self.head_size)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, self.num_heads, self.head_size).transpose(0, 1)  # [heads, S, hs]

        query = heads(self.query(hidden) * scale)
        key = heads(self.key(hidden))
        value = heads(self.value(hidden))
        probs = torch.softmax(torch.bmm(query, key.transpose(1, 2)) + additive_mask, dim=-1)
        context = torch.bmm(probs, value).transpose(0, 1).reshape(-1, width)
        return self.LayerNorm(hidden + self.dense(context))


class AlbertLayer(nn.Module):
    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.attention = AlbertAttention(spec)
        self.ffn = nn.Linear(spec.hidden_size, spec.intermediate_size)
        self.ffn_output = nn.Linear(spec.intermediate_size, spec.hidden_size)
        self.activation = make_activation(spec.hidden_act)
        self.full_layer_layer_norm = LayerNorm(spec.hidden_size, spec.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, additive_mask)
        ffn = self.ffn_output(self.activation(self.ffn(attended)))
        return self.full_layer_layer_norm(attended + ffn)


class AlbertLayerGroup(nn.Module):
    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.albert_layers = nn.ModuleList([AlbertLayer(spec) for _ in range(spec.inner_group_num)])

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.albert_layers:
            hidden = layer(hidden, additive_mask)
        return hidden


class AlbertEncoder(nn.Module):
    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.num_hidden_layers = spec.num_hidden_layers
        self.num_hidden_groups = spec.num_hidden_groups
        self.embedding_hidden_mapping_in = nn.Linear(spec.embedding_size, spec.hidden_size)
        self.albert_layer_groups = nn.ModuleList([AlbertLayerGroup(spec) for _ in range(spec.num_hidden_groups)])

    def group_for_layer(self, index: int) -> int:
        return group_for_layer(index, self.num_hidden_layers, self.num_hidden_groups)

    def forward(
        self, embedded: torch.Tensor, additive_mask: torch.Tensor, collect: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        hidden = self.embedding_hidden_mapping_in(embedded)
        if collect is not None:
            collect.append(hidden)
        for index in range(self.num_hidden_layers):
            hidden = self.albert_layer_groups[self.group_for_layer(index)](hidden, additive_mask)
            if collect is not None:
                collect.append(hidden)
        return hidden


class AlbertBody(nn.Module):
    """HF's `AlbertModel` (the `albert.` prefix of the state dict)."""

    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.embeddings = AlbertEmbeddings(spec)
        self.encoder = AlbertEncoder(spec)
        self.pooler = nn.Linear(spec.hidden_size, spec.hidden_size)


class ExportAlbert(nn.Module):
    """AlbertForSequenceClassification for export: (input_ids, attention_mask[, token_type_ids]) -> logits."""

    def __init__(self, spec: AlbertSpec):
        super().__init__()
        self.spec = spec
        self.albert = AlbertBody(spec)
        self.classifier = nn.Linear(spec.hidden_size, spec.num_labels)
        self.recurrent: nn.Module | None = None
        if spec.recurrent is not None:
            self.recurrent = make_recurrent(spec.recurrent, spec.embedding_size)
        selector = torch.zeros(spec.max_position_embeddings)
        selector[0] = 1.0
        self.register_buffer("_cls_selector", selector, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.classify(input_ids, attention_mask, token_type_ids)

    def classify(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        collect: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch, seq_len = input_ids.shape
        if batch == 1:  # the exported form: [1, 1, S], no view naming the (maybe symbolic) length
            additive_mask = (1.0 - attention_mask.to(torch.float32)).view(1, 1, -1) * MASK_VALUE
        else:
            additive_mask = (1.0 - attention_mask.to(torch.float32)).view(batch, 1, 1, seq_len) * MASK_VALUE
        embedded = self.albert.embeddings(input_ids, token_type_ids)
        if self.recurrent is not None:
            embedded = self.recurrent(embedded)
        hidden = self.albert.encoder(embedded, additive_mask, collect)
        if batch == 1:
            # [CLS] as a bmm with a one-hot selector: a slice of a dynamic-length tensor is not delegable
            first = hidden if hidden.dim() == 3 else hidden.unsqueeze(0)
            cls = torch.bmm(self._cls_selector[:seq_len].view(1, 1, -1), first)
        else:
            cls = hidden[:, 0:1, :]
        pooled = torch.tanh(self.albert.pooler(cls))
        return self.classifier(pooled).view(batch, -1)

    def classify_flat(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Batch 1 with 2-D hidden states [S, width] (the ONNX -> onnx2tf form for a dynamic length): tables read
        by gathers whose indices come from the inputs (nothing sliced to a fixed length), 3-D only in the
        attention core. Same values as `classify`."""
        e = self.albert.embeddings
        ids = input_ids.reshape(-1)
        zeros = ids * 0
        positions = torch.cumsum(zeros + 1, dim=0) - 1
        types = zeros if token_type_ids is None else token_type_ids.reshape(-1)
        embedded = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(positions) + e.token_type_embeddings(types))
        if self.recurrent is not None:
            embedded = self.recurrent(embedded.unsqueeze(0)).squeeze(0)
        additive_mask = (1.0 - attention_mask.to(torch.float32)).reshape(1, 1, -1) * MASK_VALUE
        hidden = self.albert.encoder(embedded, additive_mask)
        pooled = torch.tanh(self.albert.pooler(hidden[0:1]))
        return self.classifier(pooled).view(1, -1)

    def num_parameters(self) -> int:
        """Unique parameters (shared layers counted once)."""
        return sum(p.numel() for p in self.parameters())


def group_for_layer(index: int, layers: int, groups: int) -> int:
    """The layer group that call `index` runs: HF's int(i / (layers / groups)); groups need not divide layers."""
    return int(index / (layers / groups))


def check_spec(spec: AlbertSpec) -> None:
    if spec.hidden_act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"hidden_act {spec.hidden_act!r} is not supported; supported: {SUPPORTED_ACTIVATIONS}")
    if spec.hidden_size % spec.num_attention_heads:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    if not 1 <= spec.num_hidden_groups <= spec.num_hidden_layers:
        raise ValueError("num_hidden_groups must be between 1 and num_hidden_layers")


def export_model_from_state(spec: AlbertSpec, state_dict: dict[str, torch.Tensor]) -> ExportAlbert:
    """Build the export model and load HF-named weights (strictly, ignoring HF's non-parameter buffers)."""
    check_spec(spec)
    model = ExportAlbert(spec)
    wanted = model.state_dict()
    state = {k: v for k, v in state_dict.items() if k in wanted}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise KeyError(f"weights missing from the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    tie_identical_submodules(model)
    return model.eval()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(pa, pb))


def tie_identical_submodules(model: ExportAlbert) -> None:
    """Share attention / FFN blocks whose weights are identical across layer groups.

    HF's config can only say "share whole layers" (num_hidden_groups); ALBERT's attention-only and
    FFN-only sharing is stored as identical copies in the checkpoint. Tying them here makes every
    exported file store them once.
    """
    layers = [layer for group in model.albert.encoder.albert_layer_groups for layer in group.albert_layers]
    for index, layer in enumerate(layers):
        for earlier in layers[:index]:
            if layer.attention is not earlier.attention and _same_weights(layer.attention, earlier.attention):
                layer.attention = earlier.attention
            for name in ("ffn", "ffn_output"):
                mine, theirs = getattr(layer, name), getattr(earlier, name)
                if mine is not theirs and _same_weights(mine, theirs):
                    setattr(layer, name, theirs)
