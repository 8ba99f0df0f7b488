"""Passes: graph-level rewrites, lowerings between levels, loop-level clean-ups."""
