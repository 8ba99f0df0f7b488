"""A simulated NPU for strataml: a 16x16 matrix engine with its own scratchpad, DMA in and
out, and an elementwise unit, run by a numpy simulator that counts cycles."""

from sim_npu.backend import SimNpuBackend
from sim_npu.simulator import NpuConfig, Simulator

__all__ = ["NpuConfig", "SimNpuBackend", "Simulator"]
