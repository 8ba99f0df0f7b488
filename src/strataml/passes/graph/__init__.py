"""Graph-level passes, one file each. Importing registers them in PASSES."""

from strataml.passes.graph import (  # noqa: F401
    channels_last,
    conv3d_as_2d,
    cse,
    dce,
    fold_batchnorm,
    fold_channel_scale,
    fold_constants,
    fuse,
    infer_shapes,
    simplify,
)
