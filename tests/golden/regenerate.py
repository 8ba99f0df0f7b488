"""Writes the golden files of tests/golden/passes: for each case, a small graph built in code
(NAME.in.mlir), the passes it goes through (golden.json) and what they must leave
(NAME.out.mlir); large constants in weights.npz. Run after a deliberate change of a pass's
output, and review the diff: `python tests/golden/regenerate.py`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent / "passes"
sys.path.insert(0, str(ROOT.parents[2]))

from strataml.frontends.onnx import import_model  # noqa: E402
from strataml.ir.dialects.graph import print_graph  # noqa: E402
from strataml.ir.dialects.kernel import Kernel, print_kernel  # noqa: E402
from strataml.options import CompileOptions  # noqa: E402
from strataml.passes.lower.phases import CompileState, kernel_state  # noqa: E402
from strataml.passes.manager import LEVELS, GraphPass, PassManager, parse_pipeline  # noqa: E402
from strataml.target import Target  # noqa: E402

F = TensorProto.FLOAT
GRAPH = ("infer-shapes,fold-constants,simplify,fold-batchnorm,fold-constants,conv3d-as-2d,"
         "simplify,cse,dce,channels-last,fold-channel-scale,fuse")


def _model(nodes, inputs, outputs, weights=None):
    graph = helper.make_graph(
        nodes, "golden", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(w, n) for n, w in (weights or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cases():
    rng = np.random.default_rng(0)
    conv_w = (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
    bn = {k: (rng.random(16) + 0.5).astype(np.float32) for k in ("s", "b", "m", "v")}
    conv_bn = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                      helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
                      helper.make_node("Relu", ["n"], ["y"])],
                     [("x", [1, 8, 7, 7])], ["y"], {"w": conv_w, **bn})
    shape_calc = _model([helper.make_node("Shape", ["x"], ["s"]),
                         helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
                         helper.make_node("Unsqueeze", ["g", "z"], ["u"]),
                         helper.make_node("Concat", ["u", "m1"], ["shape"], axis=0),
                         helper.make_node("Reshape", ["x", "shape"], ["y"])],
                        [("x", [2, 3, 4])], ["y"],
                        {"i": np.array(0, np.int64), "z": np.array([0], np.int64),
                         "m1": np.array([-1], np.int64)})
    twice = _model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
                    helper.make_node("Add", ["a", "b"], ["y"]),
                    helper.make_node("Sigmoid", ["x"], ["unused"])],
                   [("x", [4, 4])], ["y"])
    mm = (rng.standard_normal((32, 16)) * 0.1).astype(np.float32)
    mlp = _model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                  helper.make_node("Add", ["h", "b"], ["a"]),
                  helper.make_node("Relu", ["a"], ["y"])],
                 [("x", [8, 32])], ["y"], {"w": mm, "b": rng.standard_normal(16).astype(
                     np.float32)})
    small_map = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                        helper.make_node("Relu", ["c"], ["r"]),
                        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1] * 4)],
                       [("x", [1, 8, 7, 7])], ["y"],
                       {"w": conv_w, "w2": (rng.standard_normal((16, 16, 3, 3)) * 0.1
                                            ).astype(np.float32)})
    conv3d = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 1, 0, 1, 1])],
                    [("x", [1, 4, 3, 6, 6])], ["y"],
                    {"w": (rng.standard_normal((8, 4, 1, 3, 3)) * 0.1).astype(np.float32)})
    w1, w2 = ((rng.standard_normal((64, 64)) * 0.1).astype(np.float32) for _ in range(2))
    two_layers = _model([helper.make_node("MatMul", ["x", "w1"], ["h"]),
                         helper.make_node("Relu", ["h"], ["r"]),
                         helper.make_node("MatMul", ["r", "w2"], ["m"]),
                         helper.make_node("Relu", ["m"], ["y"])],
                        [("x", [16, 64])], ["y"], {"w1": w1, "w2": w2})
    winograd = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)],
                      [("x", [1, 16, 14, 14])], ["y"],
                      {"w": (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)})
    transposes = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
                         helper.make_node("Transpose", ["t"], ["u"], perm=[1, 0, 2]),
                         helper.make_node("Identity", ["u"], ["y"])],
                        [("x", [2, 3, 4])], ["y"])
    squeeze_excite = _model([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                             helper.make_node("Sigmoid", ["p"], ["s"]),
                             helper.make_node("Mul", ["x", "s"], ["h"]),
                             helper.make_node("Conv", ["h", "w"], ["y"])],
                            [("x", [1, 8, 6, 6])], ["y"],
                            {"w": (rng.standard_normal((4, 8, 1, 1)) * 0.1).astype(np.float32)})
    return {
        # name: (model, passes run before the input is printed, passes under test)
        "infer-shapes": (mlp, "", "infer-shapes"),
        "fold-constants": (shape_calc, "infer-shapes", "fold-constants"),
        "simplify": (transposes, "infer-shapes", "simplify"),
        "fold-batchnorm": (conv_bn, "infer-shapes,fold-constants", "fold-batchnorm"),
        "conv3d-as-2d": (conv3d, "infer-shapes,fold-constants", "conv3d-as-2d"),
        "cse": (twice, "infer-shapes", "cse"),
        "dce": (twice, "infer-shapes,cse", "dce"),
        "channels-last": (small_map, "infer-shapes,fold-constants", "channels-last"),
        "fold-channel-scale": (squeeze_excite, "infer-shapes,fold-constants",
                               "fold-channel-scale"),
        "fuse": (conv_bn, "infer-shapes,fold-constants,fold-batchnorm,fold-constants",
                 "fuse"),
        "fuse-mlp": (mlp, "infer-shapes,fold-constants,simplify", "fuse"),
        "cpu-graph-pipeline": (small_map, "", "infer-shapes,fold-constants,simplify,"
                               "fold-batchnorm,fold-constants,conv3d-as-2d,simplify,cse,dce,"
                               "channels-last,fold-channel-scale,fuse"),
        # below the graph: the input is graph text, the output the level the last pass leaves
        "winograd": (winograd, GRAPH, "lower-to-kernels"),
        "gemm-lowering": (two_layers, GRAPH, "lower-to-kernels,prepack-weights,schedule,"
                          "lower-to-loops"),
        "memory-plan": (two_layers, GRAPH, "lower-to-kernels,prepack-weights,schedule,"
                        "lower-to-loops,plan-memory"),
        # from kernel text (the input: the kernels lower-to-kernels made)
        "schedule-conv": (small_map, f"{GRAPH},lower-to-kernels", "schedule"),
        "kernel-to-loops": (mlp, f"{GRAPH},lower-to-kernels", "schedule,lower-to-loops"),
    }


# A fixed target and one thread: the lowering's choices must not move with the machine.
TARGET = Target("cpu", "x86_64-unknown-linux-gnu", "sapphirerapids", "+avx512f", 512, 32,
                48 << 10, 2 << 20, 32 << 20, 64, 1)


def run_golden(source, passes: str, weights: dict[str, np.ndarray] | None = None) -> str:
    """The text the passes leave on `source` (a graph, or kernels read from text): a graph,
    or for lowering passes the level the last one leaves (the same call the test makes)."""
    manager = PassManager(parse_pipeline(passes), verify=True)
    options = CompileOptions(num_threads=1)
    if isinstance(source, list):
        return LEVELS[manager.passes[-1].level].print(
            manager.run(kernel_state(source, TARGET, options)))
    if all(isinstance(p, GraphPass) for p in manager.passes):
        return print_graph(manager.run(source), weights=weights)
    state = manager.run(CompileState(source, TARGET, options))
    return LEVELS[manager.passes[-1].level].print(state)


def _input(model, before: str, weights: dict[str, np.ndarray]) -> tuple[str, object]:
    """The case's input as text, and as what the passes take (a graph or kernels)."""
    graph = import_model(model, CompileOptions())
    manager = PassManager(parse_pipeline(before))
    if before.endswith("lower-to-kernels"):
        kernels: list[Kernel] = manager.run(CompileState(graph, TARGET, CompileOptions(
            num_threads=1))).kernels
        return "\n\n".join(print_kernel(k) for k in kernels), kernels
    graph = manager.run(graph)
    return print_graph(graph, weights=weights), graph


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    weights: dict[str, np.ndarray] = {}
    manifest = {}
    for name, (model, before, passes) in cases().items():
        text, source = _input(model, before, weights)
        (ROOT / f"{name}.in.mlir").write_text(text + "\n")
        level = parse_pipeline(passes)[-1].level
        out_file = f"{name}.out{LEVELS[level].suffix}"
        (ROOT / out_file).write_text(run_golden(source, passes, weights) + "\n")
        manifest[name] = {"passes": passes, "out": out_file}
    np.savez(ROOT / "weights.npz", **weights)
    (ROOT / "golden.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
