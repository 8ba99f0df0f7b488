"""strataml: an ML compiler from ONNX (and PyTorch) models to fast native code."""

from strataml.api import CompiledModel, compile, load
from strataml.errors import (
    ArtifactError,
    InputError,
    ModelLoadError,
    ShapeError,
    StrataError,
    UnsupportedOpError,
)
from strataml.options import CompileOptions, Target

__version__ = "0.1.0"
__all__ = [
    "ArtifactError", "CompileOptions", "CompiledModel", "InputError", "ModelLoadError",
    "ShapeError", "StrataError", "Target", "UnsupportedOpError", "compile", "load",
]
