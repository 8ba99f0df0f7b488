"""Devices by name -> lazy import path: the one explicit table of backends."""

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
