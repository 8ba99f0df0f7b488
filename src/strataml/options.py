"""CompileOptions: the explicit configuration passed down through every level (the
hardware it is for is a `Target`, see strataml.target)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from strataml import config
from strataml.target import Target, host_target

__all__ = ["CompileOptions", "Target", "host_target"]


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes how a model compiles. Frozen so it can key caches."""

    num_threads: int | None = None
    # Values for symbolic dims, by dim name ("batch": 1) or by input name ({"x": (1, 3, 8, 8)}).
    dim_values: dict[str, int] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Keep the dims that `dim_values`/`input_shapes` do not bind as run-time sizes: the model
    # compiles once and runs at any size within `dim_ranges` (docs/dynamic-shapes.md). None
    # (the default): so where every kernel can take run-time sizes, else every unbound dim
    # is bound (`dim_values`, else 1) with a warning saying why; True: so or an error; False:
    # bound. A model without unbound dims compiles the same either way.
    dynamic_dims: bool | None = None
    # Bounds (inclusive) per dim name, as the model spells it: the bound proofs and memory
    # plan may assume them, and each call's inputs are checked against them. Dims without
    # one range over [1, 2**31).
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    verify: bool = field(default_factory=config.debug_from_env)
    dump_ir_dir: str | None = None
    opt_level: int = 3
    # Schedules chosen by hand or by a tuner, by kernel name (as `--dump-ir`'s
    # NN-schedule-after-schedule.txt names them): a `strataml.schedule.Schedule` or its JSON
    # text. They apply to the kernel as that file prints it; the others get the default rules.
    schedules: dict[str, Any] = field(default_factory=dict)
    # Decisions above the schedules, by graph node name: {"Conv_3": {"algorithm": "im2col",
    # "layout": "channels-first"}} (what `strataml.passes.decisions.decision_space` lists).
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)
    # A tuning database (`strataml tune`): its best records decide the workloads they cover;
    # `decisions` given here win over them.
    tuning_db: str | None = None
    # Denormal floats (below 1.2e-38) computed as zero, as inference runtimes do: on x86 they
    # cost ~100x per operation (see codegen/llvm.py). False: IEEE gradual underflow.
    flush_denormals: bool = True

    def threads(self) -> int:
        if self.num_threads is not None:
            return self.num_threads
        return config.num_threads_from_env() or (os.cpu_count() or 1)
