"""Per-call overhead: one Add of 16 floats, strataml against ONNX Runtime, alternated.

    .venv/bin/python bench/overhead.py

Both run on one thread; each round times strataml, ORT and ORT again (the noise floor) for
--min-time seconds, in rotating order. Printed: median microseconds per call and the median
of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import strataml


def tiny_model():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [16]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [16])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def per_call(fn, min_time: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        for _ in range(100):
            fn()
        calls += 100
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    model = tiny_model()
    feeds = {"a": np.ones(16, np.float32), "b": np.arange(16, dtype=np.float32)}
    ours = strataml.compile(model, num_threads=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(model.SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"]) for _ in range(2)]
    np.testing.assert_array_equal(ours.run(feeds)[0], sessions[0].run(None, feeds)[0])
    contenders = [("strataml", lambda: ours.run(feeds)),
                  ("ort", lambda: sessions[0].run(None, feeds)),
                  ("ort2", lambda: sessions[1].run(None, feeds))]
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(args.rounds):
        for name, fn in contenders[r % 3:] + contenders[:r % 3]:
            times[name].append(per_call(fn, args.min_time))
    ratio = statistics.median(s / o for s, o in zip(times["strataml"], times["ort"], strict=True))
    floor = statistics.median(a / b for a, b in zip(times["ort2"], times["ort"], strict=True))
    print(f"per call: strataml {statistics.median(times['strataml']) * 1e6:.1f} us, "
          f"onnxruntime {statistics.median(times['ort']) * 1e6:.1f} us; "
          f"strataml/ort {ratio:.2f} (noise floor ort/ort {floor:.2f})")


if __name__ == "__main__":
    main()
