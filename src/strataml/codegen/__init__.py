"""Code generation: loop dialect -> LLVM IR -> object code."""
