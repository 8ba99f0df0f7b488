"""Target: every hardware fact a compiler rule may ask about, in one frozen description.

Schedules and lowerings read the target they are given, never a literal: a rule that sizes
a block for L1 reads `l1_bytes`, one that spaces prefetches reads `line_bytes`. The host's
description is detected; another machine's is data (`NAMED_TARGETS`), so a rule can be
asked what it would do there without running there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """What the code is generated for; capabilities are data, never discovered by reflection.

    `name` is the backend that builds for it ("cpu" for the host's and named CPUs)."""

    name: str
    triple: str
    cpu: str
    features: str  # LLVM's "+avx2,+fma,-avx512f,..."
    vector_bits: int
    vector_registers: int = 16
    l1_bytes: int = 32 << 10  # data cache per core
    l2_bytes: int = 1 << 20  # per core
    l3_bytes: int = 8 << 20  # shared
    line_bytes: int = 64
    cores: int = 1  # the threads a parallel loop may use by default

    def __post_init__(self) -> None:
        if self.vector_bits < 64:
            raise ValueError(f"Target {self.cpu or self.triple}: vector_bits={self.vector_bits}; "
                             "the schedules tile for at least 2 float lanes (a core without a "
                             "vector unit: give 128, and LLVM spreads each vector over scalar "
                             "registers)")

    @property
    def vector_lanes_f32(self) -> int:
        return max(1, self.vector_bits // 32)

    def has(self, feature: str) -> bool:
        """Whether LLVM feature `feature` (without its sign) is enabled."""
        return f"+{feature}" in self.features.split(",")

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Target:
        known = {f.name for f in fields(Target)}
        return Target(**{k: v for k, v in data.items() if k in known})


@lru_cache(maxsize=1)
def host_target() -> Target:
    """The CPU this process runs on, with its native features (AVX-512, AVX2, NEON...) and
    its caches as Linux reports them."""
    import os

    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    enabled = {k for k, v in features.items() if v}
    triple = llvm.get_process_triple()
    if "avx512f" in enabled:
        bits, registers = 512, 32
    elif "avx2" in enabled or "avx" in enabled:
        bits, registers = 256, 16
    elif triple.startswith(("aarch64", "arm64")):
        bits, registers = 128, 32
    else:
        bits, registers = 128, 16
    caches = _caches()
    defaults = Target("cpu", triple, "", "", bits)
    affinity = getattr(os, "sched_getaffinity", None)
    return Target(
        name="cpu",
        triple=triple,
        cpu=llvm.get_host_cpu_name(),
        features=features.flatten(),
        vector_bits=bits,
        vector_registers=registers,
        l1_bytes=caches.get("l1", defaults.l1_bytes),
        l2_bytes=caches.get("l2", defaults.l2_bytes),
        l3_bytes=caches.get("l3", defaults.l3_bytes),
        line_bytes=caches.get("line", defaults.line_bytes),
        cores=len(affinity(0)) if affinity else (os.cpu_count() or 1),
    )


def _caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int]:
    """Data/unified cache sizes per level and the line size from Linux sysfs ({} where it
    cannot be read: the target's defaults apply)."""
    found: dict[str, int] = {}
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
            found[f"l{level}"] = int(text.rstrip("KM")) * scale
            found.setdefault("line", int((index / "coherency_line_size").read_text()))
        except (OSError, ValueError):
            continue
    return found


# Machines described as data: what the schedule rules would choose there can be asked here
# (cross-compiling to them is the deployment issue's work).
NAMED_TARGETS: dict[str, Target] = {
    "neoverse-n1": Target("cpu", "aarch64-unknown-linux-gnu", "neoverse-n1",
                          "+neon,+fp-armv8,+crc,+lse,+rcpc,+dotprod", 128, 32,
                          64 << 10, 1 << 20, 32 << 20, 64, 1),
    "cortex-a76": Target("cpu", "aarch64-unknown-linux-gnu", "cortex-a76",
                         "+neon,+fp-armv8,+crc,+lse,+rcpc,+dotprod", 128, 32,
                         64 << 10, 512 << 10, 2 << 20, 64, 1),
    "x86-64-v3": Target("cpu", "x86_64-unknown-linux-gnu", "haswell",
                        "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,-avx512f", 256, 16,
                        32 << 10, 256 << 10, 8 << 20, 64, 1),
    # Any ARMv8-A Linux machine: NEON is part of the base ISA.
    "aarch64-linux-gnu": Target("cpu", "aarch64-unknown-linux-gnu", "generic",
                                "+neon,+fp-armv8", 128, 32, 64 << 10, 1 << 20, 8 << 20, 64, 1),
    # RV64GC with the vector extension 1.0 at its minimum length (VLEN >= 128, Zvl128b):
    # LLVM maps fixed-width vectors onto RVV registers.
    "riscv64-linux-gnu": Target("cpu", "riscv64-unknown-linux-gnu", "generic-rv64",
                                "+m,+a,+f,+d,+c,+v", 128, 32, 32 << 10, 1 << 20, 4 << 20, 64,
                                1),
    # WebAssembly with 128-bit SIMD (every current browser and Node >= 16); one thread.
    "wasm32": Target("cpu", "wasm32-unknown-unknown", "generic",
                     "+simd128,+bulk-memory,+nontrapping-fptoint,+sign-ext,+mutable-globals",
                     128, 16, 32 << 10, 1 << 20, 8 << 20, 64, 1),
    # RV64GC without the vector extension: the rules' 4-lane vectors become 4 scalar
    # registers each (LLVM scalarises them), which is unrolling.
    "riscv64gc-linux-gnu": Target("cpu", "riscv64-unknown-linux-gnu", "generic-rv64",
                                  "+m,+a,+f,+d,+c", 128, 32, 32 << 10, 1 << 20, 4 << 20, 64, 1),
}
