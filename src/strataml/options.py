"""CompileOptions and Target: the explicit configuration passed down through every level."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from strataml import config


@dataclass(frozen=True)
class Target:
    """What the code is generated for; capabilities are data, never discovered by reflection."""

    name: str
    triple: str
    cpu: str
    features: str
    vector_bits: int
    l2_bytes: int = 1 << 20

    @property
    def vector_lanes_f32(self) -> int:
        return max(1, self.vector_bits // 32)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "triple": self.triple,
            "cpu": self.cpu,
            "features": self.features,
            "vector_bits": self.vector_bits,
            "l2_bytes": self.l2_bytes,
        }


@lru_cache(maxsize=1)
def host_target() -> Target:
    """The CPU this process runs on, with its native features (AVX-512, AVX2, NEON...)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    enabled = {k for k, v in features.items() if v}
    if "avx512f" in enabled:
        bits = 512
    elif "avx2" in enabled or "avx" in enabled:
        bits = 256
    else:
        bits = 128
    return Target(
        name="cpu",
        triple=llvm.get_process_triple(),
        cpu=llvm.get_host_cpu_name(),
        features=features.flatten(),
        vector_bits=bits,
        l2_bytes=_l2_bytes(),
    )


def _l2_bytes() -> int:
    """Per-core L2 size from Linux sysfs; 1 MiB where it cannot be read."""
    from pathlib import Path

    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                return int(text.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    return 1 << 20


def resolve_target(target: str | Target) -> Target:
    if isinstance(target, Target):
        return target
    if target in ("cpu", "host", "llvm"):
        return host_target()
    raise ValueError(f"unknown target {target!r}; available: 'cpu'")


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes how a model compiles. Frozen so it can key caches."""

    num_threads: int | None = None
    # Values for symbolic dims, by dim name ("batch": 1) or by input name ({"x": (1, 3, 8, 8)}).
    dim_values: dict[str, int] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verify: bool = field(default_factory=config.debug_from_env)
    dump_ir_dir: str | None = None
    opt_level: int = 3
    # Schedules chosen by hand or by a tuner, by kernel name (as `--dump-ir`'s
    # 91-schedule.txt names them): a `strataml.schedule.Schedule` or its JSON text. They
    # apply to the kernel as that file prints it; the other kernels get the default rules.
    schedules: dict[str, Any] = field(default_factory=dict)
    # Denormal floats (below 1.2e-38) computed as zero, as inference runtimes do: on x86 they
    # cost ~100x per operation (see codegen/llvm.py). False: IEEE gradual underflow.
    flush_denormals: bool = True

    def threads(self) -> int:
        if self.num_threads is not None:
            return self.num_threads
        return config.num_threads_from_env() or (os.cpu_count() or 1)
