"""strataml in one screen: build a small ResNet, compile it, check it against ONNX Runtime.

Run with `make demo` (or `python examples/demo.py [--threads N] [--repeat N]`). Exits
non-zero when strataml's output differs from ONNX Runtime's beyond rtol 1e-3, atol 1e-4.
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

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, name: str, cin: int, cout: int, k: int, stride: int,
                relu: bool) -> str:
        # He initialisation keeps activations O(1) through the blocks, so the tolerance
        # check means the same thing at the head as at the stem.
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        self.nodes.append(helper.make_node(
            "Conv", [x, self.weight(f"{name}.w", w)], [f"{name}.conv"], name=f"{name}/conv",
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        bn = [self.weight(f"{name}.bn.{p}", v) for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, cout)),
            ("bias", self.rng.uniform(-0.2, 0.2, cout)),
            ("mean", self.rng.uniform(-0.2, 0.2, cout)),
            ("var", self.rng.uniform(0.5, 1.5, cout)))]
        out = f"{name}.bn"
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", *bn], [out],
                                           name=f"{name}/bn", epsilon=1e-5))
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"],
                                               name=f"{name}/relu"))
            out = f"{name}.relu"
        return out

    def block(self, x: str, name: str, cin: int, cout: int, stride: int) -> str:
        h = self.conv_bn(x, f"{name}.a", cin, cout, 3, stride, relu=True)
        h = self.conv_bn(h, f"{name}.b", cout, cout, 3, 1, relu=False)
        short = x if (cin == cout and stride == 1) else self.conv_bn(
            x, f"{name}.proj", cin, cout, 1, stride, relu=False)
        self.nodes.append(helper.make_node("Add", [h, short], [f"{name}.add"],
                                           name=f"{name}/add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"],
                                           name=f"{name}/relu"))
        return f"{name}.out"


def build_resnet(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """conv-BN-relu stem, maxpool, three residual blocks (one with a projection shortcut),
    global average pool and a Gemm head; input 1x3x64x64."""
    b = _Builder(np.random.default_rng(seed))
    h = b.conv_bn("image", "stem", 3, 16, 3, 2, relu=True)
    b.nodes.append(helper.make_node("MaxPool", [h], ["pool"], name="stem/pool",
                                    kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    h = b.block("pool", "layer1", 16, 16, 1)
    h = b.block(h, "layer2", 16, 32, 2)
    h = b.block(h, "layer3", 32, 32, 1)
    b.nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"], name="head/gap"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="head/flatten", axis=1))
    fc_w = b.weight("fc.w", b.rng.standard_normal((classes, 32)) / np.sqrt(32))
    fc_b = b.weight("fc.b", b.rng.uniform(-0.1, 0.1, classes))
    b.nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="head/fc",
                                    transB=1))
    graph = helper.make_graph(
        b.nodes, "tiny_resnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        b.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: first-touch page faults and lazy initialisation are not latency
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both strataml and ONNX Runtime (default 1)")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs of each")
    args = parser.parse_args(argv)

    model = build_resnet(seed=0)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)

    start = time.perf_counter()
    compiled = strataml.compile(model, num_threads=args.threads)
    compile_s = time.perf_counter() - start
    (got,) = compiled.run({"image": x})

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"image": x})

    err = float(np.max(np.abs(got - ref)))
    ok = bool(np.allclose(got, ref, rtol=RTOL, atol=ATOL))
    print(f"model: tiny ResNet, {len(model.graph.node)} ONNX nodes, input 1x3x64x64 -> "
          f"{len(compiled.plan.kernels)} strataml kernels")
    print(f"compile time: {compile_s:.2f} s")
    print(f"max |strataml - onnxruntime| = {err:.2e} (rtol {RTOL}, atol {ATOL}): "
          f"{'OK' if ok else 'MISMATCH'}")
    if not ok:
        return 1

    ms_strata = median_ms(lambda: compiled.run({"image": x}), args.repeat)
    ms_ort = median_ms(lambda: sess.run(None, {"image": x}), args.repeat)
    print(f"median latency over {args.repeat} runs, {args.threads} thread(s): "
          f"strataml {ms_strata:.3f} ms, onnxruntime {ms_ort:.3f} ms "
          f"(strataml / onnxruntime = {ms_strata / ms_ort:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
