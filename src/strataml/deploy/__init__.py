"""Deployment outputs beyond the .smod artifact: a model as a C library (`c_library`)."""
