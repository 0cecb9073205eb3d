"""Write a quatrain from a first character, one compiled LSTM step per character.

The recurrent step (`apps.poem.model.LSTMStep`) is compiled by MobileDL and run on this
machine or on the phone (`apps.runtime`); the hidden and cell state stay in the zero-copy
executor's preset buffers between steps (`apps.poem.stepper`). Sampling is top-k with
temperature from ``numpy.random.default_rng(seed)``, so a seed gives the same poem;
punctuation is placed by the form (``，`` after lines 1 and 3, ``。`` after lines 2 and 4),
and a character is not used twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from apps.poem.model import BOS, COMMA, SPECIALS, STOP, WEIGHTS, LSTMStep, load_model
from apps.poem.stepper import PlainStepper, stepper_for
from apps.runtime import Placement, open_runner

LINE_LENGTHS = (5, 7)


@dataclass(frozen=True)
class PoemOptions:
    """Form and sampling of one poem."""

    line_length: int = 5
    seed: int = 0
    temperature: float = 0.8
    top_k: int = 30

    def check(self) -> None:
        if self.line_length not in LINE_LENGTHS:
            raise ValueError(f"line_length must be one of {LINE_LENGTHS} (five- or "
                             f"seven-character lines), got {self.line_length}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


def check_start(first: str, vocab: str) -> None:
    """Raise ValueError unless `first` is one character the model knows."""
    if not isinstance(first, str) or len(first) != 1:
        raise ValueError(f"give exactly one start character, got {first!r}")
    if first in SPECIALS or first not in vocab:
        hint = ""
        try:
            import opencc

            simple = opencc.OpenCC("t2s").convert(first)
            if simple != first and simple in vocab:
                hint = f" (the model uses simplified characters: try {simple!r})"
        except ImportError:
            pass
        raise ValueError(
            f"start character {first!r} is not in the model's vocabulary of "
            f"{len(vocab) - len(SPECIALS):,} simplified characters common in Tang poems"
            f"{hint}; list them with `mdl-tvm app poem --list-chars` (or "
            "apps.poem.vocabulary()), e.g. 春 月 山 风 花")


def vocabulary(path=WEIGHTS) -> str:
    """The characters a poem may start with, most frequent first."""
    _, vocab = load_model(path)
    return vocab[len(SPECIALS):]


class Sampler:
    """Turns step logits into the next character under the quatrain's constraints."""

    def __init__(self, vocab: str, options: PoemOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self.banned = np.zeros(len(vocab), dtype=bool)
        self.banned[[vocab.index(s) for s in SPECIALS]] = True

    def use(self, token: int) -> None:
        self.banned[token] = True

    def sample(self, logits: np.ndarray) -> int:
        scores = logits.astype(np.float64).ravel() / self.options.temperature
        scores[self.banned] = -np.inf
        k = min(self.options.top_k, int((~self.banned).sum()))
        top = np.argsort(-scores, kind="stable")[:k]
        probs = np.exp(scores[top] - scores[top].max())
        token = int(top[self.rng.choice(k, p=probs / probs.sum())])
        self.use(token)
        return token


def compose(first: str, step, vocab: str, state, options: PoemOptions = PoemOptions()) -> str:
    """Write one quatrain.

    Parameters
    ----------
    first : str
        Its first character (must be in `vocab`).
    step : stepper or callable
        An `apps.poem.stepper` object (``start(h, c)``, ``step(token) -> logits``), or a
        function ``run(token (1,) int64, h, c) -> [logits (1, V), h', c']``.
    vocab : str
        The model's vocabulary (token i is ``vocab[i]``).
    state : (numpy.ndarray, numpy.ndarray)
        Initial ``(h, c)``, normally zeros.
    options : PoemOptions

    Returns
    -------
    str
        Four lines, each ending in ``，`` or ``。``, joined by newlines.
    """
    options.check()
    check_start(first, vocab)
    index = {ch: i for i, ch in enumerate(vocab)}
    sampler = Sampler(vocab, options)
    if not hasattr(step, "start"):
        step = PlainStepper(step)
    step.start(*state)
    n = options.line_length
    plan = []  # None: sample; a character: forced
    for line in range(4):
        plan += [None] * n + [COMMA if line % 2 == 0 else STOP]
    plan[0] = first
    text = []
    logits = step(index[BOS])
    for pos, forced in enumerate(plan):
        if forced is None:
            token = sampler.sample(logits)
        else:
            token = index[forced]
            if forced not in (COMMA, STOP):
                sampler.use(token)
        text.append(vocab[token])
        if pos < len(plan) - 1:
            logits = step(token)
    lines = ["".join(text[i:i + n + 1]) for i in range(0, len(text), n + 1)]
    return "\n".join(lines)


def write_poem(first: str, options: PoemOptions = PoemOptions(),
               placement: Placement | None = None, weights=WEIGHTS) -> str:
    """Compile the LSTM step for ``placement`` (default: this machine) and write a quatrain
    starting with `first`."""
    placement = placement or Placement()
    options.check()
    placement.check()
    net, vocab = load_model(weights)
    check_start(first, vocab)
    step = LSTMStep(net).eval()
    h, c = step.zero_state()
    example = (torch.zeros(1, dtype=torch.int64), torch.from_numpy(h), torch.from_numpy(c))
    with open_runner(step, example, placement) as runner:
        return compose(first, stepper_for(runner), vocab, (h, c), options)


def write_poem_eager(first: str, options: PoemOptions = PoemOptions(), weights=WEIGHTS) -> str:
    """The same poem with PyTorch eager (the reference)."""
    net, vocab = load_model(weights)
    step = LSTMStep(net).eval()

    def run(token, h, c):
        with torch.no_grad():
            outs = step(torch.from_numpy(token), torch.from_numpy(h), torch.from_numpy(c))
        return [o.numpy() for o in outs]

    return compose(first, run, vocab, step.zero_state(), options)
