"""Feed-forward networks: a plain MLP (relu / gelu / gelu_tanh) and a gated MLP (GEGLU / SwiGLU)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's "gelu_new" and T5 v1.1's gated-gelu use the tanh approximation.
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    # gated variants: the activation applied to the gate branch
    "geglu": F.gelu,
    "geglu_tanh": _gelu_tanh,
    "swiglu": F.silu,
}
GATED = {"geglu", "geglu_tanh", "swiglu"}


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # skip the call entirely when off: a decode step runs this once per layer
    return F.dropout(x, p, training=True) if p and training else x


class MLP(nn.Module):
    """x -> act(x W_in) W_out  (GPT-2, BERT, T5 v1.0)."""

    def __init__(self, dim: int, hidden: int, activation: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(_dropout(self.act(self.fc_in(x)), self.dropout, self.training))


class GatedMLP(nn.Module):
    """x -> (act(x W_gate) * x W_up) W_out  (T5 v1.1 gated-gelu, LLaMA SwiGLU)."""

    def __init__(self, dim: int, hidden: int, activation: str, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.fc_gate = nn.Linear(dim, hidden, bias=bias)
        self.fc_up = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(_dropout(self.act(self.fc_gate(x)) * self.fc_up(x), self.dropout, self.training))


def make_ffn(dim: int, hidden: int, activation: str, bias: bool, dropout: float) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    cls = GatedMLP if activation in GATED else MLP
    return cls(dim, hidden, activation, bias=bias, dropout=dropout)
