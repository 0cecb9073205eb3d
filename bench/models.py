"""The models of the peer benchmark: PyTorch modules, inputs, and NCNN-friendly forms.

Every model is given as a `ModelCase`: the PyTorch module every engine starts from (the
trained weights where the project has them), numpy inputs, and the module and inputs handed
to the NCNN converter (``pnnx``), which for the poem step differ in form, not in math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "apps" / "style_transfer" / "examples" / "chelsea.png"
MODELS = ("lenet5", "alexnet", "resnet18", "mobilenetv2", "style", "poem_step")
LABELS = {"lenet5": "LeNet-5", "alexnet": "AlexNet-style", "resnet18": "ResNet-18",
          "mobilenetv2": "MobileNetV2", "style": "style transfer", "poem_step": "poem LSTM step"}
STYLE_SIZE = 256


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked model.

    Attributes
    ----------
    name : str
        Key in `MODELS`.
    module : torch.nn.Module
        The network every engine starts from.
    inputs : tuple of numpy.ndarray
        One array per input (batch 1).
    input_names : tuple of str
    ncnn_module : torch.nn.Module
        What pnnx converts (same math; see `NcnnLSTMStep`).
    ncnn_inputs : tuple of numpy.ndarray
        The inputs in that module's layout.
    trained : bool
        Whether the weights are trained (Fashion-MNIST models, the apps).
    """

    name: str
    module: object
    inputs: tuple
    input_names: tuple
    ncnn_module: object
    ncnn_inputs: tuple
    trained: bool = False
    notes: list = field(default_factory=list)

    @property
    def shape_text(self) -> str:
        """The input shape(s) as the tables print them."""
        return "x".join(map(str, self.inputs[0].shape)) if self.name != "poem_step" else \
            "token + h, c " + "x".join(map(str, self.inputs[1].shape))


def _lstm_step_class():
    import torch

    class NcnnLSTMStep(torch.nn.Module):
        """`apps.poem.model.LSTMStep` in the form pnnx converts to NCNN.

        Two changes of form, none of math: the embedding lookup ``embed[token]`` becomes
        ``nn.Embedding`` (NCNN's ``Embed`` layer; pnnx leaves a bare tensor index as an
        unsupported ``pnnx.Expression``), and the state is laid out (1, layers, hidden)
        instead of (layers, 1, hidden), because pnnx treats axis 0 as the batch axis and
        cannot unbind or stack along it.
        """

        def __init__(self, step):
            super().__init__()
            self.step = step
            self.emb = torch.nn.Embedding.from_pretrained(step.embed.detach().clone())

        def forward(self, token, h, c):
            """One step: logits, new h and new c, the state laid out (1, layers, hidden)."""
            s = self.step
            x, hs, cs = s.cells(self.emb(token), lambda layer: h[:, layer],
                                lambda layer: c[:, layer])
            return x @ s.w_out + s.b_out, torch.stack(hs, 1), torch.stack(cs, 1)

    return NcnnLSTMStep


def style_input(size: int = STYLE_SIZE) -> np.ndarray:
    """The style-transfer input: the shipped photo resized to `size` x `size`, (1, 3, H, W)."""
    from apps.style_transfer.data import read_image, resize
    from apps.style_transfer.stylize import to_tensor

    return to_tensor(resize(read_image(PHOTO), size, size))


def load_case(name: str) -> ModelCase:
    """Build `name`'s `ModelCase` (trained weights for LeNet-5, AlexNet-style and the apps)."""
    rng = np.random.default_rng(0)
    if name in ("lenet5", "alexnet", "resnet18", "mobilenetv2"):
        from mdl_tvm import data, train, zoo

        trained = name in zoo.FASHION_MNIST_MODELS
        module = train.trained_model(name) if trained else zoo.build(name).eval()
        if trained:
            x = data.load_fashion_mnist("test", limit=1)[0]
        else:
            x = rng.standard_normal(zoo.INPUT_SHAPES[name]).astype("float32")
        return ModelCase(name, module, (x,), ("x",), module, (x,), trained)
    if name == "style":
        from apps.style_transfer.model import load_transformer

        module = load_transformer().eval()
        x = style_input()
        return ModelCase(name, module, (x,), ("x",), module, (x,), True)
    if name == "poem_step":
        from apps.poem.model import LSTMStep, load_model

        net, vocab = load_model()
        step = LSTMStep(net).eval()
        h, c = (a + rng.standard_normal(a.shape).astype("float32") * 0.1
                for a in step.zero_state())
        token = np.array([vocab.index("春")], np.int64)
        ncnn_inputs = (token, np.ascontiguousarray(h.transpose(1, 0, 2)),
                       np.ascontiguousarray(c.transpose(1, 0, 2)))
        return ModelCase(name, step, (token, h, c), ("token", "h", "c"),
                         _lstm_step_class()(step).eval(), ncnn_inputs, True)
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")


def ncnn_feed(case: ModelCase) -> list[np.ndarray]:
    """NCNN's inputs: no batch axis; an int token as its int32 bits in a float32 Mat."""
    feed = []
    for a in case.ncnn_inputs:
        if a.dtype == np.int64:
            a = a.astype(np.int32).view(np.float32)
        feed.append(np.ascontiguousarray(a[0] if a.ndim >= 3 else a))
    return feed


def weight_bytes_torch(module) -> int:
    """Bytes of the module's parameters and buffers (its state dict)."""
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))
