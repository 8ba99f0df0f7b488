"""Lowering rules, one module per op family. Importing registers them."""

from strataml.passes.lower.ops import elementwise, indexing, layout, nn, tensor  # noqa: F401
