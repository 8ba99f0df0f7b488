"""Issue 17's sizes through the public interface: a BERT encoder exported with dynamic batch
and sequence axes and a GPT-2 exported with a dynamic sequence, compiled by
`strataml.compile(model)` with no options at all (their dims stay run-time sizes; the
position tables' 512 rows bound the sequence), run at sequence 8 ... 384 and batch 1 and 4,
compiled once, each size against ONNX Runtime on the same model (rtol 1e-3 / atol 1e-4)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import strataml
from tests.conftest import ort_run
from tests.unit.graphs import dumped
from tests.unit.test_torch_frontend import LastHidden, _import_transformers

torch = pytest.importorskip("torch")

SEQS = (8, 32, 64, 128, 256, 384)
BATCHES = (1, 4)
RTOL, ATOL = 1e-3, 1e-4


def _bert(path: Path) -> onnx.ModelProto:
    tf = _import_transformers()
    torch.manual_seed(0)
    model = LastHidden(tf.BertModel(tf.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=50))).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 16, dtype=torch.int64),), str(path),
                          input_names=["input_ids"], dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    return onnx.load(str(path))


def _gpt2(path: Path, dynamic_batch: bool = False) -> onnx.ModelProto:
    """GPT-2 from the dynamo exporter, its sequence dynamic (and its batch: `dynamic_batch`)."""
    pytest.importorskip("onnxscript")
    tf = _import_transformers()
    torch.manual_seed(0)
    model = LastHidden(tf.GPT2Model(tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=512,
        use_cache=False))).eval()
    dims = {1: torch.export.Dim("seq", min=1, max=512)}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2 if dynamic_batch else 1, 16, dtype=torch.int64),),
                          str(path), input_names=["input_ids"], dynamo=True,
                          dynamic_shapes=(dims,))
    return onnx.load(str(path))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_compiled_once_by_default_and_right_at_every_size(family: str, tmp_path: Path,
                                                          compiles: list[str]) -> None:
    model = (_bert if family == "bert" else _gpt2)(tmp_path / f"{family}.onnx")
    compiled = strataml.compile(model, num_threads=2, dump_ir_dir=str(tmp_path / "ir"))
    assert len(compiles) == 1
    assert "seq" in compiled.plan.dims
    # attention's run-time key paths fired (a silent fallback fails here): Q . K^T's query
    # rows jammed inside its key lanes; BERT's softmax keeps its exponentials in a row
    # scratch of the derived range's 512 keys (GPT-2's range is not derived: no scratch)
    loops = re.split(r"(?m)^(?=func @)", dumped(tmp_path / "ir", "loop"))
    assert any(re.search(r"for vector \S+ in 0\.\.32 \{\n\s*for unroll", f)
               and "prefetch %" in f for f in loops if re.match(r"func @k\d+_matmul", f))
    if family == "bert":
        assert any(re.search(r"alloc %exp\d+_row: float32\[512\]", f) for f in loops)
    batches = BATCHES if family == "bert" else (1,)
    rng = np.random.default_rng(0)
    for batch in batches:
        for seq in SEQS:
            feeds = {compiled.input_names[0]: rng.integers(0, 50, (batch, seq))}
            for got, want in zip(compiled.run(feeds), ort_run(model, feeds), strict=True):
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{family} at {batch} x {seq}")
    assert len(compiles) == 1, "a new size recompiled the model"
    if family == "bert":  # (its position table is sliced to seq: seq <= 512 is derived)
        with pytest.raises(strataml.InputError, match=r"dim 'seq'\) is 513, outside its"):
            compiled.run({compiled.input_names[0]: np.zeros((1, 513), np.int64)})
