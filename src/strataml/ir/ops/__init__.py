"""Graph-dialect op definitions, one module per op family. Importing registers them."""

from strataml.ir.ops import elementwise, indexing, layout, nn, tensor  # noqa: F401
