"""The one error tree: every error says what went wrong, where, and what to do about it."""

from __future__ import annotations


class StrataError(Exception):
    """Base class of every error strataml raises on purpose."""


class ModelLoadError(StrataError, ValueError):
    """The model file or proto cannot be read or fails ONNX's checker."""


class UnsupportedOpError(StrataError, NotImplementedError):
    """One or more ops (or attributes) have no implementation.

    Derives from NotImplementedError so ONNX's backend test runner reports "unsupported".
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} unsupported op(s) or attribute(s):\n{lines}")


class ShapeError(StrataError, ValueError):
    """Shapes or dtypes that are inconsistent with an op's rules."""


class VerifyError(StrataError):
    """An IR invariant is broken: a compiler bug, reported with the op and its source node."""


class PassError(StrataError):
    """A pass failed unexpectedly; wraps the original error with the pass and node."""


class ScheduleError(StrataError):
    """A schedule primitive's preconditions do not hold."""


class CodegenError(StrataError):
    """LLVM rejected the generated code: a compiler bug."""


class ArtifactError(StrataError, ValueError):
    """A saved .smod artifact is missing, corrupt or from an incompatible version."""


class InputError(StrataError, ValueError):
    """run() was called with feeds that do not match the compiled model's inputs."""
