"""Lowering rules, one module per op family. Importing registers them."""

from strataml.passes.lower.ops import elementwise, indexing, layout, nn, reduce, tensor  # noqa: F401
