"""The sim-npu backend: strataml's CPU pipeline builds every kernel; the kernels the NPU can
run (one contraction, MatMul / Gemm / ungrouped Conv, and an elementwise epilogue) are
partitioned onto it, the rest run on the host CPU. The plan is the CPU's: each NPU kernel
DMAs its operands from where the plan put them and writes its result back there, so the
copies between the two are in the plan. Registered only through strataml's public interface
(`strataml.backends` entry point, or `register_backend`)."""

from __future__ import annotations

import ctypes
import hashlib
import pickle
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sim_npu.simulator import Counts, NpuConfig, Simulator
from strataml.ir.dialects.graph import Graph, Node, evaluate_node
from strataml.options import CompileOptions
from strataml.passes.pipelines import CPU_PIPELINE, CompiledProgram, compile_graph
from strataml.runtime.devices.cpu import CpuDevice
from strataml.runtime.hal import Executable
from strataml.target import Target, host_target

CONTRACTIONS = ("MatMul", "Gemm", "Conv")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Clip", "Max", "Min")


@dataclass(frozen=True)
class Operand:
    """A graph value an NPU kernel reads or writes: in the plan's memory (region, offset) or,
    for a constant, held in the NPU's own weight memory."""

    dtype: str
    shape: tuple[int, ...]
    where: tuple[int, int] | None = None
    constant: np.ndarray | None = None


@dataclass(frozen=True)
class NpuStep:
    kernel: str
    node: Node
    inputs: tuple[Operand | None, ...]
    outputs: tuple[Operand, ...]
    mkn: tuple[int, int, int]  # the product's rows, depth, columns (batches folded in rows)
    epilogue_ops: int


def _mkn(op: Node, shapes: list[tuple[int, ...]], out: tuple[int, ...]) -> tuple[int, int, int]:
    if op.op == "Conv":
        w = shapes[1]  # [Cout, Cin, kh, kw]: rows Cout, depth Cin*kh*kw, columns the pixels
        return out[1] * out[0], int(np.prod(w[1:])), int(np.prod(out[2:]))
    k = shapes[0][-1] if not (op.op == "Gemm" and op.attr("transA")) else shapes[0][0]
    return int(np.prod(out[:-1])), k, out[-1]


def _npu_step(program: CompiledProgram, k: int) -> NpuStep | None:
    """The kernel as an NPU step, or None when the NPU cannot run it."""
    kernel, node, values = program.kernels[k], program.nodes[k], program.bindings[k]
    body = node.body or (node,)
    heads = [n for n in body if n.op in CONTRACTIONS]
    if len(heads) != 1 or any(n.op not in CONTRACTIONS + ELEMENTWISE for n in body) \
            or (heads[0].op == "Conv" and heads[0].attr("group") != 1):
        return None
    args = dict(zip((b.name for b in kernel.params), program.plan.calls[k].args, strict=True))
    where = {v: args[b] for b, v in values.items() if b in args}
    graph: Graph = program.graph

    def operand(value: str) -> Operand | None:
        t = graph.types[value]
        if value in graph.constants:
            return Operand(t.dtype, t.static_shape(), constant=graph.constants[value])
        if value not in where:
            return None
        return Operand(t.dtype, t.static_shape(), where[value])

    inputs = tuple(operand(v) if v else None for v in node.inputs)
    outputs = tuple(operand(v) for v in node.outputs)
    if any(o is None for o in outputs) or any(i is None for i, v in zip(
            inputs, node.inputs, strict=True) if v):
        return None
    shapes = [graph.types[v].static_shape() for v in heads[0].inputs if v]
    mkn = _mkn(heads[0], shapes, graph.types[heads[0].outputs[0]].static_shape())
    return NpuStep(kernel.name, node, inputs, tuple(o for o in outputs if o), mkn,
                   len(body) - 1)


class SimEntry:
    """The loaded program: CPU kernels through the host's object code, NPU kernels through
    the simulator; `last_run` holds where each kernel ran and its simulated cycles."""

    def __init__(self, cpu: Any, steps: list[tuple[str, Any]], calls: Any,
                 simulator: Simulator) -> None:
        self.cpu, self.steps, self.simulator = cpu, steps, simulator
        self.calls = calls
        io_slots = [o for _, c in steps if not isinstance(c, int)
                    for o in (*c.inputs, *c.outputs) if o is not None and o.where]
        self.io_size = 1 + max([o for c in calls for r, o in c.args if r == 2]
                               + [o.where[1] for o in io_slots if o.where[0] == 2], default=0)
        self.functions = {c.function: ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(
            c.args))(cpu.function_address(c.function)) for c in calls}
        self.last_run: list[tuple[str, str, Counts | None]] = []

    def set_num_threads(self, n: int) -> None:
        self.cpu.set_num_threads(n)

    def function_address(self, name: str) -> int:
        return self.cpu.function_address(name)

    def __call__(self, arena: int, weights: int, io: int) -> None:
        table = (ctypes.c_void_p * self.io_size).from_address(io)

        def address(region: int, offset: int) -> int:
            return int(table[offset]) if region == 2 else (arena, weights)[region] + offset

        run: list[tuple[str, str, Counts | None]] = []
        for kind, step in self.steps:
            if kind == "cpu":
                call = self.calls[step]
                self.functions[call.function](*(address(r, o) for r, o in call.args))
                run.append((call.kernel, "cpu", None))
                continue
            values = [self._view(o, address) if o is not None else None for o in step.inputs]
            for out, value in zip(step.outputs, evaluate_node(step.node, values), strict=True):
                self._view(out, address)[...] = value
            run.append((step.kernel, "npu", self.simulator.matmul_cycles(
                *step.mkn, step.epilogue_ops)))
        self.last_run = run

    @staticmethod
    def _view(o: Operand, address: Any) -> np.ndarray:
        if o.constant is not None:
            return o.constant
        nbytes = int(np.prod(o.shape)) * np.dtype(o.dtype).itemsize
        raw = (ctypes.c_char * max(nbytes, 1)).from_address(address(*o.where))
        return np.frombuffer(raw, dtype=o.dtype, count=int(np.prod(o.shape))).reshape(o.shape)


class SimNpuDevice(CpuDevice):
    """Host memory is shared (an integrated accelerator): the NPU DMAs from the plan's
    buffers; a launch runs the steps in order and returns when they are done."""

    name = "sim-npu"

    def __init__(self, config: NpuConfig) -> None:
        self.config = config
        self.loaded: dict[str, SimEntry] = {}

    def refusals(self, executable: Executable) -> list[str]:
        return []  # (the simulator runs what this process built for it)

    def load(self, executable: Executable, entry: str, native_libs: tuple[str, ...] = ()
             ) -> SimEntry:
        payload = pickle.loads(executable.data)
        cpu = super().load(Executable("object", executable.triple, payload["object"]), entry,
                           native_libs)
        loaded = SimEntry(cpu, payload["steps"], payload["calls"], Simulator(self.config))
        self.loaded[hashlib.sha1(executable.data).hexdigest()] = loaded
        return loaded


class SimNpuBackend:
    name = "sim-npu"
    description = ("a simulated 16x16 matrix engine with a scratchpad (examples/sim_npu); "
                   "the rest on the host CPU")

    def __init__(self, config: NpuConfig | None = None) -> None:
        self.config = config or NpuConfig()
        self._device = SimNpuDevice(self.config)

    def default_target(self) -> Target:
        return replace(host_target(), name=self.name)

    def compile(self, graph: Graph, target: Target, options: CompileOptions
                ) -> CompiledProgram:
        # The CPU's pipeline less its channels-last rewrite: the engine takes convs as they are.
        pipeline = CPU_PIPELINE.replace("channels-last,", "").replace(",link-shared", "")
        program = compile_graph(graph, replace(target, name="cpu"), options, pipeline)
        steps: list[tuple[str, Any]] = []
        for k in range(len(program.kernels)):
            npu = _npu_step(program, k)
            steps.append(("npu", npu) if npu is not None else ("cpu", k))
        data = pickle.dumps({"object": program.object_code, "steps": steps,
                             "calls": program.plan.calls})
        return replace(program, executable=Executable("sim-npu", target.triple, data))

    def device(self) -> SimNpuDevice:
        return self._device

    def report(self, model: Any, feeds: dict[str, np.ndarray]) -> str:
        """Where each kernel ran and its simulated cycles, after one run on `feeds`."""
        model.run(feeds)
        entry = self._device.loaded[hashlib.sha1(model.executable.data).hexdigest()]
        lines = [f"scratchpad {self.config.scratchpad_bytes >> 10} KiB, DMA "
                 f"{self.config.dma_bytes_per_cycle} B/cycle"]
        total = Counts()
        for kernel, _, counts in entry.last_run:
            if counts is None:
                lines.append(f"  {kernel:<32} cpu")
                continue
            total.compute += counts.compute
            total.dma += counts.dma
            total.elementwise += counts.elementwise
            lines.append(f"  {kernel:<32} npu  {counts.total:>10} cycles (compute "
                         f"{counts.compute}, dma {counts.dma}, elementwise "
                         f"{counts.elementwise})")
        on_npu = sum(1 for _, d, _ in entry.last_run if d == "npu")
        lines.append(f"npu: {on_npu} of {len(entry.last_run)} kernels, {total.total} cycles "
                     f"(compute {total.compute}, dma {total.dma}, elementwise "
                     f"{total.elementwise})")
        return "\n".join(lines)
