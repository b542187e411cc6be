"""PyTorch `nn.LSTM` (oneDNN on CPU, cuDNN on a CUDA GPU), eager or with `torch.compile` of the forward and loss.

With PyTorch's default `torch._dynamo.config.allow_rnn = False`, Dynamo does not trace `nn.LSTM`:
`torch._dynamo.explain` of the model finds no graph (2026-12-05 audit, torch 2.13), so the "torch.compile"
row runs the model eagerly and compiles the loss only; it is eager PyTorch with a compiled loss.

On a machine where `torch.cuda.is_available()`, the model and the batch live on the GPU; each step ends
with `loss.item()`, which waits for the GPU, so the timings are whole steps.

`nn.LSTM` keeps two bias vectors per layer (`b_ih`, `b_hh`), so its parameter count exceeds the Keras-layout
models by `4H` per layer; the arithmetic is the same.

Denormals are flushed to zero (`torch.set_flush_denormal(True)`), as XLA (JAX, Keras-JAX) and TensorFlow do
by default: PyTorch does not by default, and on some CPUs the gradients fading through shape D's 500 steps
then run on the slow denormal path (measured 2026-12-02: 3,773 ms per step against 513 ms flushed).
"""

from __future__ import annotations

from benchmarks.shapes import Shape


def available() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        return f"torch not installed ({e}); pip install -e '.[bench]'"
    return None


def _model(shape: Shape):
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(shape.vocab, shape.embed) if shape.vocab else None
            sizes = [shape.in_features, *shape.lstm]
            self.lstms = nn.ModuleList(
                nn.LSTM(sizes[n], sizes[n + 1], batch_first=True) for n in range(len(shape.lstm))
            )
            dense, size = [], shape.lstm[-1]
            for units, act in shape.dense:
                dense += [nn.Linear(size, units), {"relu": nn.ReLU()}[act]]
                size = units
            dense.append(nn.Linear(size, shape.classes))
            self.head = nn.Sequential(*dense)

        def forward(self, x):
            h = self.embed(x) if self.embed is not None else x
            for lstm in self.lstms:
                h, (hn, _) = lstm(h)
            return self.head(hn[-1])

    return Model(), torch


class Bench:
    def __init__(self, shape: Shape, seed: int = 0, compile: bool = False):
        import torch

        torch.manual_seed(seed)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = _model(shape)
        model = model.to(device)
        self.param_count = int(sum(p.numel() for p in model.parameters()))
        x, y = shape.data(seed)
        self.x = (torch.from_numpy(x).long() if shape.vocab else torch.from_numpy(x)).to(device)
        if shape.classes == 1:
            self.y = torch.from_numpy(y).to(device)
            loss_fn = torch.nn.BCEWithLogitsLoss()
        else:
            self.y = torch.from_numpy(y).long().to(device)
            loss_fn = torch.nn.CrossEntropyLoss()
        if shape.optimizer == "rmsprop":
            self.opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        else:
            self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)

        def forward_loss(x, y):
            return loss_fn(model(x).squeeze(-1) if shape.classes == 1 else model(x), y)

        self.forward_loss = torch.compile(forward_loss) if compile else forward_loss
        self.model = model

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.x, self.y)
        loss.backward()
        self.opt.step()
        loss.item()

    def memory_bytes(self) -> int | None:
        return None


def build(shape: Shape, seed: int = 0, compile: bool = False) -> Bench:
    import torch

    torch.set_flush_denormal(True)  # like XLA and TensorFlow (module docstring)
    return Bench(shape, seed, compile)
