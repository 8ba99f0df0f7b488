"""The lean runtime: HAL (Device, Buffer, Executable, Executor) and artifacts.

Imports nothing from the compiler (ir, passes, frontends, codegen): a loaded artifact runs
without the compiler present (tests enforce this).
"""
