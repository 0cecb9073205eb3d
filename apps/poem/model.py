"""Character-level LSTM language model of Tang quatrains, and its one-step form.

`CharLSTM` (embedding -> stacked ``nn.LSTM`` -> linear) is what training uses; `LSTMStep`
holds the same weights and computes one step with explicit matmuls,
``(token, h, c) -> (logits, h', c')``, the function MobileDL compiles and the phone runs
once per character (``nn.LSTM`` is a fused op ``torch.export`` cannot hand to Relax as one
step). Gate order and biases follow ``nn.LSTM`` (i, f, g, o; ``b_ih + b_hh``).

Weights ship as float16 ``weights.npz`` with the vocabulary (token 0 ``^`` begins a poem,
1 ``$`` ends it, 2 ``，``, 3 ``。``, then characters by frequency).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mdl_tvm.core.errors import ModelFormatError, one_line
from mdl_tvm.core.io import atomic_output

WEIGHTS = Path(__file__).with_name("weights.npz")
BOS, EOS, COMMA, STOP = "^", "$", "，", "。"
SPECIALS = (BOS, EOS, COMMA, STOP)


@dataclass(frozen=True)
class PoemConfig:
    """Sizes of the language model."""

    vocab_size: int
    embed: int = 128
    hidden: int = 256
    layers: int = 2


class CharLSTM(nn.Module):
    """Tokens (N, T) int64 -> logits (N, T, vocab_size)."""

    def __init__(self, config: PoemConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        self.lstm = nn.LSTM(config.embed, config.hidden, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


class LSTMStep(nn.Module):
    """One step: token (1,) int64, h and c (layers, 1, hidden) -> logits (1, V), h', c'."""

    def __init__(self, net: CharLSTM):
        super().__init__()
        cfg = net.config
        self.layers = cfg.layers
        self.embed = nn.Parameter(net.embed.weight.detach().clone(), requires_grad=False)
        for layer in range(cfg.layers):
            w_ih = getattr(net.lstm, f"weight_ih_l{layer}").detach()
            w_hh = getattr(net.lstm, f"weight_hh_l{layer}").detach()
            bias = (getattr(net.lstm, f"bias_ih_l{layer}")
                    + getattr(net.lstm, f"bias_hh_l{layer}")).detach()
            self.register_buffer(f"w_ih{layer}", w_ih.t().contiguous())  # (in, 4H)
            self.register_buffer(f"w_hh{layer}", w_hh.t().contiguous())  # (H, 4H)
            self.register_buffer(f"b{layer}", bias[None].contiguous())  # (1, 4H)
        self.register_buffer("w_out", net.head.weight.detach().t().contiguous())  # (H, V)
        self.register_buffer("b_out", net.head.bias.detach()[None].contiguous())

    def cells(self, x: torch.Tensor, h_at, c_at):
        """The stacked LSTM cells on input `x`; ``h_at(layer)`` / ``c_at(layer)`` give a
        layer's state. Returns ``(top output, [h per layer], [c per layer])``."""
        hs, cs = [], []
        for layer in range(self.layers):
            gates = (x @ getattr(self, f"w_ih{layer}") + h_at(layer) @ getattr(self, f"w_hh{layer}")
                     + getattr(self, f"b{layer}"))
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c_at(layer) + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return x, hs, cs

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x, hs, cs = self.cells(self.embed[token], lambda layer: h[layer], lambda layer: c[layer])
        return x @ self.w_out + self.b_out, torch.stack(hs), torch.stack(cs)

    def zero_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``(h, c)`` as float32 numpy arrays of shape (layers, 1, hidden)."""
        shape = (self.layers, 1, self.w_hh0.shape[0])
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


def save_weights(net: CharLSTM, vocab: str, path: str | Path = WEIGHTS) -> Path:
    """Write float16 weights, config and vocabulary to ``.npz`` (atomic)."""
    path = Path(path)
    arrays = {k: v.detach().cpu().numpy().astype(np.float16)
              for k, v in net.state_dict().items()}
    cfg = net.config
    arrays["__config__"] = np.array([cfg.vocab_size, cfg.embed, cfg.hidden, cfg.layers])
    arrays["__vocab__"] = np.array(vocab)
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_model(path: str | Path = WEIGHTS) -> tuple[CharLSTM, str]:
    """The trained `CharLSTM` (float32, eval mode) and its vocabulary string.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist (``python -m apps.poem.train`` re-creates it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no poem model at {path}; re-create it with "
                                "`python -m apps.poem.train`")
    try:
        with np.load(path, allow_pickle=False) as data:
            vocab_size, embed, hidden, layers = (int(v) for v in data["__config__"])
            vocab = str(data["__vocab__"])
            state = {k: torch.from_numpy(data[k].astype(np.float32))
                     for k in data.files if not k.startswith("__")}
        if len(vocab) != vocab_size:
            raise ValueError(f"its vocabulary has {len(vocab):,} characters but the model "
                             f"{vocab_size:,} (a token past the embedding would read out of "
                             "bounds)")
        net = CharLSTM(PoemConfig(vocab_size, embed, hidden, layers))
        net.load_state_dict(state)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EOFError,
            zipfile.BadZipFile) as err:
        raise ModelFormatError(f"{path} is not a usable poem model: {one_line(err)}; "
                               "re-create it with `python -m apps.poem.train`") from None
    return net.eval(), vocab
