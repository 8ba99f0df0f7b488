"""`torch.compile(model, backend="strataml", dynamic=True)`: Dynamo's symbolic sizes become
run-time dims, so a graph compiles once (one strataml compilation, counted by wrapping
`strataml.api.compile_graph_for`) and runs at every size, matching eager PyTorch (rtol
1e-3, atol 1e-4). What cannot be compiled symbolically builds per size, with a warning
naming the reason."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import strataml.api
from strataml.torch_compile import FALLBACK_WARNING, PER_SIZE_WARNING

torch = pytest.importorskip("torch")
nn = torch.nn

from tests.unit.test_torch_frontend import LastHidden, _import_transformers  # noqa: E402

SEQ_LENGTHS = (3, 5, 8, 13, 2, 21, 32, 7)  # 8 sizes, >= 2 (Dynamo specialises 0 and 1)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-3,
                               atol=1e-4)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts strataml compilations: one entry per `compile_graph_for` call."""
    calls: list[int] = []
    real = strataml.api.compile_graph_for

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(strataml.api, "compile_graph_for", counting)
    return calls


def _run_at_sizes(model: nn.Module, batch: int, vocab: int) -> None:
    compiled = torch.compile(model, backend="strataml", dynamic=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no per-size or eager fallback
        for seq in SEQ_LENGTHS:
            ids = torch.randint(0, vocab, (batch, seq), generator=gen)
            _close(compiled(ids), model(ids))


def test_bert_compiles_once_for_eight_sequence_lengths(compilations: list[int]) -> None:
    tf = _import_transformers()
    torch.manual_seed(0)
    model = LastHidden(tf.BertModel(tf.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=50))).eval()
    _run_at_sizes(model, 2, 50)
    assert len(compilations) == 1


def test_gpt2_compiles_once_for_eight_sequence_lengths(compilations: list[int]) -> None:
    tf = _import_transformers()
    torch.manual_seed(0)
    model = LastHidden(tf.GPT2Model(tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64,
        use_cache=False))).eval()
    _run_at_sizes(model, 1, 50)
    assert len(compilations) == 1


class Block(nn.Module):
    """Attention written with `x.shape` arithmetic: Dynamo passes the sizes as SymInts."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 4, 4).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
        return self.out((att @ v).transpose(1, 2).reshape(b, s, 16)) + x


def test_mark_dynamic_compiles_once(compilations: list[int]) -> None:
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="strataml")
    with torch.no_grad():
        for seq in (4, 9, 17):
            x = torch.randn(3, seq, 16)
            torch._dynamo.mark_dynamic(x, 1)
            _close(compiled(x), model(x))
    assert len(compilations) == 1


class WithRareOp(nn.Module):
    """A supported prefix and suffix around an op strataml does not implement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x) * 2
        return torch.special.erfcx(y).sin() + y


def _messages(caught: list[warnings.WarningMessage], start: str) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith(start)]


EAGER = FALLBACK_WARNING.split("{")[0]
PER_SIZE = PER_SIZE_WARNING.split("{")[0]


def _three_sizes(model: nn.Module) -> list[warnings.WarningMessage]:
    """`model` through torch.compile(dynamic=True) at three sizes, each checked against
    eager; the warnings it gave."""
    compiled = torch.compile(model, backend="strataml", dynamic=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rows in (2, 5, 11):
            x = torch.randn(rows, 3, 4 + rows)
            _close(compiled(x), model(x))
    return caught


def test_partitions_keep_working_with_symbolic_sizes(compilations: list[int]) -> None:
    caught = _three_sizes(WithRareOp())
    eager = _messages(caught, EAGER)
    assert len(eager) == 1
    assert "erfcx" in eager[0]
    assert not _messages(caught, PER_SIZE)
    assert len(compilations) == 2  # the parts before and after erfcx, once each


class Flattened(WithRareOp):
    """After erfcx, a part whose inputs have the size s1*s2 but neither dim alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x).reshape(x.shape[0], -1) * 2
        return torch.special.erfcx(y).sin() + y


def test_a_part_that_cannot_bind_its_dims_builds_per_size(compilations: list[int]) -> None:
    caught = _three_sizes(Flattened())
    per_size = _messages(caught, PER_SIZE)
    assert len(per_size) == 1
    assert "no input has it as an axis of its own" in per_size[0]
    # the symbolic build's first part, then two parts per size
    assert len(compilations) == 1 + 2 * 3


class ConvNet(nn.Module):
    """A ResNet-style stem, block and head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.block(y) + y)
        return self.fc(y.mean((2, 3)))


def test_cnn_with_a_dynamic_batch_runs_at_every_batch(compilations: list[int]) -> None:
    """Symbolically where convolutions lower over a run-time batch; else per size, with the
    reason in one warning (never a silent rebuild)."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    compiled = torch.compile(model, backend="strataml")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (2, 3, 5):
            x = torch.randn(batch, 3, 16, 16)
            torch._dynamo.mark_dynamic(x, 0)
            _close(compiled(x), model(x))
    per_size = _messages(caught, PER_SIZE)
    if per_size:
        assert len(per_size) == 1
        assert "Error" in per_size[0]
        # the symbolic attempt (counted if it failed in compilation), then one per batch
        assert len(compilations) in (3, 4)
    else:
        assert len(compilations) == 1


def test_dynamic_true_on_a_cnn_makes_its_map_dynamic_too() -> None:
    """dynamic=True makes height and width run-time sizes as well: still right at each
    size, per size if it must (a warning says why)."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    compiled = torch.compile(model, backend="strataml", dynamic=True)
    with torch.no_grad(), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for batch, side in ((2, 16), (3, 12)):
            x = torch.randn(batch, 3, side, side)
            _close(compiled(x), model(x))


def test_a_size_argument_that_is_no_tensor_axis_builds_per_size() -> None:
    """An int argument Dynamo makes dynamic is no input's axis: per size, saying so."""
    def f(x: torch.Tensor, n: int) -> torch.Tensor:
        return x * n

    compiled = torch.compile(f, backend="strataml", dynamic=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (2, 3, 4):
            x = torch.randn(n + 1, 4)
            _close(compiled(x, n), x * n)
    per_size = _messages(caught, PER_SIZE)
    assert len(per_size) == 1
    assert "not the size of any tensor input" in per_size[0]
