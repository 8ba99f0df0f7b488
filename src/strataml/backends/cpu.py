"""The host CPU backend: graph passes, kernels, schedules, loops, LLVM object code, run by
the host's JIT linker."""

from __future__ import annotations

from strataml.ir.dialects.graph import Graph
from strataml.options import CompileOptions
from strataml.passes.pipelines import CompiledProgram, compile_graph
from strataml.runtime.devices.cpu import CpuDevice
from strataml.target import Target, host_target


class CpuBackend:
    name = "cpu"

    @property
    def description(self) -> str:
        host = host_target()
        return (f"the host CPU ({host.cpu}, {host.triple}, {host.vector_bits}-bit vectors, "
                f"{host.cores} cores)")

    def default_target(self) -> Target:
        return host_target()

    def compile(self, graph: Graph, target: Target, options: CompileOptions
                ) -> CompiledProgram:
        return compile_graph(graph, target, options)

    def device(self) -> CpuDevice:
        return CpuDevice()
