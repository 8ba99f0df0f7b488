"""Lowerings from one level to the next."""
