"""Core IR: types, scalar expressions and the three dialects (graph, kernel, loop)."""
