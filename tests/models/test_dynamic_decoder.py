"""A GPT-2-like decoder (token and learned position embeddings, causal attention, MLP)
written here and exported by the dynamo exporter with dynamic batch and sequence, compiled
once with no declared ranges (issue 17):
- the position ids are `Range(0, seq)` gathered from a table of 48 rows, so the model runs
  only for seq <= 48 (passes/graph/required_ranges.index_dim_ranges): the plan assumes it,
  names why, and refuses seq = 49 before native code, as ONNX Runtime refuses the Gather;
- with that bound, the softmax's exponentials go to a row scratch (passes/lower/row_scratch)
  and take no arena, and the exporter's `Where(IsNaN(p), 0, p)` after the softmax joins its
  kernel (passes/graph/fuse.ROW_MAPS): the [batch, heads, seq, seq] scores live in one
  buffer of the arena, not three;
- and it matches ONNX Runtime (rtol 1e-3, atol 1e-4) at several sizes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import strataml
from strataml.errors import InputError
from strataml.ir.dialects.loop import Allocate, print_function
from strataml.sizes import evaluate
from tests.conftest import ort_run

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
nn = torch.nn

VOCAB, WIDTH, HEADS, POSITIONS = 40, 32, 4, 48


class Decoder(nn.Module):
    """One pre-norm block of a GPT-2-like decoder, written without transformers."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(POSITIONS, WIDTH)
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(),
                                 nn.Linear(2 * WIDTH, WIDTH))

    def forward(self, ids: Any) -> Any:
        b, s = ids.shape
        x = self.tokens(ids) + self.positions(torch.arange(s))
        q, k, v = self.qkv(self.norm1(x)).split(WIDTH, dim=-1)

        def heads(t: Any) -> Any:
            return t.view(b, s, HEADS, -1).transpose(1, 2)

        causal = torch.ones(s, s, dtype=torch.bool).tril()
        a = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v),
                                                       attn_mask=causal)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, WIDTH))
        return x + self.mlp(self.norm2(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Any]:
    torch.manual_seed(0)
    path = Path(tmp_path_factory.mktemp("decoder")) / "decoder.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoder().eval(), (torch.zeros(2, 6, dtype=torch.int64) + 3,),
                          str(path), dynamo=True, input_names=["ids"],
                          dynamic_shapes=(dims,))
    model = onnx.load(str(path))
    return model, strataml.compile(model, dynamic_dims=True, num_threads=2)


def test_the_position_table_bounds_seq_and_the_plan_says_why(exported: Any) -> None:
    _, compiled = exported
    assert ("seq", 1, POSITIONS) in compiled.plan.dim_ranges
    (name, why), = compiled.plan.dim_range_reasons
    assert name == "seq"
    assert why.startswith("Gather"), why
    assert why.endswith(f"needs seq <= {POSITIONS}"), why
    with pytest.raises(InputError, match=f"Gather.*seq <= {POSITIONS}"):
        compiled.run({"ids": np.zeros((1, POSITIONS + 1), np.int64)})


def test_the_decoder_matches_onnx_runtime_at_several_sizes(exported: Any) -> None:
    model, compiled = exported
    rng = np.random.default_rng(4)
    for b, s in [(1, 1), (2, 7), (3, 17), (1, POSITIONS)]:
        ids = rng.integers(0, VOCAB, (b, s))
        got, = compiled.run({"ids": ids})
        want, = ort_run(model, {"ids": ids})
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"{b}x{s}")


def test_the_scores_are_one_buffer_and_the_softmax_row_a_scratch(exported: Any) -> None:
    _, compiled = exported
    softmax = [f for f in compiled.program.loops if "softmax" in f.name]
    assert len(softmax) == 1, [f.name for f in softmax]
    assert "where" in softmax[0].name, softmax[0].name
    scratch = [s for s in softmax[0].body if isinstance(s, Allocate)]
    assert any(a.size == POSITIONS for a in scratch), print_function(softmax[0])
    # The arena's growth in seq^2 at batch 1 (second difference of its formula): one
    # [1, heads, seq, seq] float32 buffer of scores (16 bytes per seq^2) plus the causal
    # mask's (at most 4 + 1 bytes per seq^2); before, the softmax's output, its
    # exponentials and the IsNaN/Where kernel's output were three score buffers.
    arena = compiled.plan.arena_bytes

    def at(s: int) -> int:
        return evaluate(arena, {"batch": 1, "seq": s})

    per_square = (at(3000) - 2 * at(2000) + at(1000)) / (2 * 1000**2)
    assert 4 * HEADS <= per_square < 2 * 4 * HEADS, per_square
