"""strataml in one screen: build a small transformer encoder, compile it, check it against
ONNX Runtime and time both.

Run with `make demo` (or `python examples/demo.py [--threads N] [--rounds N]`). Exits
non-zero when strataml's output differs from ONNX Runtime's beyond rtol 1e-3, atol 1e-4.
The encoder is BERT-style (2 layers, hidden 256, 4 heads, sequence 128, post-LayerNorm, exact
GELU), the kind of model strataml's fused attention and gemm paths are built for; the
latencies are measured in alternation (strataml, ORT, strataml, ...), the ratio is the median
of the per-round ratios.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import strataml

RTOL, ATOL = 1e-3, 1e-4


class _Builder:
    """Appends nodes and weights to a graph under construction, with unique names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(self, x: str, name: str, n_in: int, n_out: int) -> str:
        w = (self.rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.02 * self.rng.standard_normal(n_out)).astype(np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.const(f"{name}.w", w)], f"{name}.mm"),
                               self.const(f"{name}.b", b)], name)

    def layer_norm(self, x: str, name: str, hidden: int) -> str:
        gamma = self.const(f"{name}.g", (1 + 0.1 * self.rng.standard_normal(hidden))
                           .astype(np.float32))
        beta = self.const(f"{name}.b", (0.1 * self.rng.standard_normal(hidden))
                          .astype(np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-12)


def build_encoder(layers: int = 2, hidden: int = 256, heads: int = 4, seq: int = 128,
                  seed: int = 0) -> onnx.ModelProto:
    """Token embeddings [1, seq, hidden] in, the encoded sequence out."""
    b = _Builder(np.random.default_rng(seed))
    head_dim, f32 = hidden // heads, np.float32
    split = b.const("split", np.array([0, 0, heads, head_dim], np.int64))
    merge = b.const("merge", np.array([0, 0, hidden], np.int64))
    scale = b.const("scale", np.array(head_dim ** -0.5, f32))
    sqrt_half, one, half = (b.const(n, np.array(v, f32)) for n, v in
                            (("sqrt_half", 0.5 ** 0.5), ("one", 1.0), ("half", 0.5)))
    x = "tokens"
    for i in range(layers):
        p = f"l{i}"

        def heads_of(t: str, perm: list[int], p: str = p) -> str:
            return b.op("Transpose", [b.op("Reshape", [t, split], f"{t}.split")], f"{t}.heads",
                        perm=perm)

        q = heads_of(b.linear(x, f"{p}.q", hidden, hidden), [0, 2, 1, 3])
        k = heads_of(b.linear(x, f"{p}.k", hidden, hidden), [0, 2, 3, 1])
        v = heads_of(b.linear(x, f"{p}.v", hidden, hidden), [0, 2, 1, 3])
        scores = b.op("Mul", [b.op("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        probs = b.op("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t",
                   perm=[0, 2, 1, 3])
        attn = b.linear(b.op("Reshape", [ctx, merge], f"{p}.ctx.m"), f"{p}.o", hidden, hidden)
        x = b.layer_norm(b.op("Add", [attn, x], f"{p}.res1"), f"{p}.ln1", hidden)
        h = b.linear(x, f"{p}.ffn1", hidden, 4 * hidden)
        erf = b.op("Erf", [b.op("Mul", [h, sqrt_half], f"{p}.gelu.s")], f"{p}.gelu.erf")
        gate = b.op("Mul", [b.op("Add", [erf, one], f"{p}.gelu.1p"), half], f"{p}.gelu.g")
        h = b.linear(b.op("Mul", [h, gate], f"{p}.gelu"), f"{p}.ffn2", 4 * hidden, hidden)
        x = b.layer_norm(b.op("Add", [h, x], f"{p}.res2"), f"{p}.ln2", hidden)
    b.nodes.append(helper.make_node("Identity", [x], ["encoded"], name="out"))
    graph = helper.make_graph(
        b.nodes, "encoder",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, [1, seq, hidden])],
        b.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both strataml and ONNX Runtime (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated timing rounds")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per round")
    args = parser.parse_args(argv)

    model = build_encoder()
    x = np.random.default_rng(1).standard_normal((1, 128, 256)).astype(np.float32)

    start = time.perf_counter()
    compiled = strataml.compile(model, num_threads=args.threads)
    compile_s = time.perf_counter() - start
    (got,) = compiled.run({"tokens": x})

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"tokens": x})

    err = float(np.max(np.abs(got - ref)))
    ok = bool(np.allclose(got, ref, rtol=RTOL, atol=ATOL))
    print(f"model: transformer encoder (2 layers, hidden 256, 4 heads, sequence 128), "
          f"{len(model.graph.node)} ONNX nodes -> {len(compiled.plan.kernels)} strataml "
          "kernels")
    print(f"compile time: {compile_s:.2f} s")
    print(f"max |strataml - onnxruntime| = {err:.2e} (rtol {RTOL}, atol {ATOL}): "
          f"{'OK' if ok else 'MISMATCH'}")
    if not ok:
        return 1

    def run_strataml() -> None:
        compiled.run({"tokens": x})

    def run_ort() -> None:
        sess.run(None, {"tokens": x})

    run_strataml(), run_ort()  # warm-up: first-touch page faults, lazy initialisation
    ours, theirs, ratios = [], [], []
    for _ in range(args.rounds):
        ours.append(median_ms(run_strataml, args.runs))
        theirs.append(median_ms(run_ort, args.runs))
        ratios.append(ours[-1] / theirs[-1])
    print(f"latency ({args.threads} thread(s), median of {args.rounds} alternated rounds of "
          f"{args.runs} runs): strataml {np.median(ours):.2f} ms, onnxruntime "
          f"{np.median(theirs):.2f} ms (strataml / onnxruntime = {np.median(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
