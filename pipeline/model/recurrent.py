"""The recurrent front end from the project's source text: a GRU over the embeddings, before the encoder.

Standard ALBERT has none; here it is an optional variant so its cost and benefit can be measured.
It is residual with a zero-initialised output projection, so a freshly added GRU leaves the model's
function unchanged and distillation only adds what helps:  e' = e + W_out * GRU(e).

Eager training uses `nn.GRU` (fast); `torch.export` sees the same weights as an explicit loop over the
static sequence length (matmuls, sigmoid, tanh: all delegable), since ExecuTorch and TFLite have no
fused GRU op that the lowering paths accept. The GRU is unidirectional, so trailing padding never
changes the outputs at real token positions.
"""
from __future__ import annotations

import torch
from torch import nn


class GRUFrontEnd(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.gru = nn.GRU(size, size, batch_first=True)
        self.output = nn.Linear(size, size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """The GRU as explicit steps (torch's gate order: reset, update, new)."""
        weight_ih, weight_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        bias_ih, bias_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        size = self.gru.hidden_size
        inputs = torch.nn.functional.linear(x, weight_ih, bias_ih)  # [B, S, 3H], all steps at once
        hidden = torch.zeros(x.shape[0], size, dtype=x.dtype)
        outputs = []
        for step in range(x.shape[1]):
            gates_x = inputs[:, step, :]
            gates_h = torch.nn.functional.linear(hidden, weight_hh, bias_hh)
            reset = torch.sigmoid(gates_x[:, :size] + gates_h[:, :size])
            update = torch.sigmoid(gates_x[:, size : 2 * size] + gates_h[:, size : 2 * size])
            new = torch.tanh(gates_x[:, 2 * size :] + reset * gates_h[:, 2 * size :])
            hidden = new + update * (hidden - new)
            outputs.append(hidden.unsqueeze(1))
        return torch.cat(outputs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or not self.training and getattr(self, "force_unrolled", False):
            recurrent = self.unrolled(x)
        else:
            recurrent, _ = self.gru(x)
        return x + self.output(recurrent)


def make_recurrent(kind: str, size: int) -> nn.Module:
    if kind == "gru":
        return GRUFrontEnd(size)
    raise ValueError(f"recurrent front end {kind!r} is not supported; supported: gru")
