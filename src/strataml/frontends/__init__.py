"""Frontends: turn a model from a framework into the graph dialect."""
