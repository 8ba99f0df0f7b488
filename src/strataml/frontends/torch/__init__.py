"""PyTorch frontend: torch.export / ATen-level FX graphs -> graph dialect.

Importing this package imports torch; `strataml` itself does not.
"""

from strataml.frontends.torch.aten import ATEN
from strataml.frontends.torch.importer import (
    TorchGraph,
    import_exported,
    import_fx,
    supported,
)

__all__ = ["ATEN", "TorchGraph", "import_exported", "import_fx", "supported"]
