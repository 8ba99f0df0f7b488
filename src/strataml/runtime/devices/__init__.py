"""Runtime devices by name -> lazy import path. A loaded artifact finds its device here,
without importing the compiler (a backend's `device()` gives the same class at compile time)."""

from __future__ import annotations

import importlib

from strataml.runtime.hal import Device

DEVICES: dict[str, str] = {
    "cpu": "strataml.runtime.devices.cpu:CpuDevice",
}


def get_device(name: str) -> Device:
    try:
        module, cls = DEVICES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown device {name!r}; available: {', '.join(DEVICES)}") from None
    return getattr(importlib.import_module(module), cls)()
