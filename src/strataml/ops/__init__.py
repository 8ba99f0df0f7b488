"""Op declarations, one module per op family: each op of the graph dialect is declared once
(`declare_op`): attribute schema with defaults, shape rule, numpy reference and lowering rule.
Importing the package declares them all."""

from strataml.ops import (  # noqa: F401
    conv,
    conv_transpose,
    elementwise,
    indexing,
    layout,
    matmul,
    norm,
    pool,
    reduce,
    tensor,
)
