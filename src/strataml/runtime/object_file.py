"""Bounds-checked reading of an ELF object file's header and sections, in Python.

The loader must look inside code before trusting it (which machine it is for, the contract
digest it carries), and LLVM's object parser is not written for hostile input (random bytes
crash it), so every offset and size here is checked against the data before it is used.
"""

from __future__ import annotations

import struct

# e_machine values of the architectures strataml targets, by triple prefix.
ELF_MACHINES = {"x86_64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm64": 183,
                "riscv64": 243, "riscv32": 243, "arm": 40}


class ObjectFileError(ValueError):
    """The bytes are not a well-formed ELF object."""


class ElfObject:
    """An ELF object's machine and its sections by name (offset, size), all within the data."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ObjectFileError("not an ELF object (bad magic or too short)")
        wide, order = data[4], data[5]
        if wide not in (1, 2) or order not in (1, 2):
            raise ObjectFileError("unknown ELF class or byte order")
        self._data = data
        self._end = "<" if order == 1 else ">"
        self.is_64 = wide == 2
        (self.machine,) = self._unpack("H", 18)
        if self.is_64:
            (shoff,) = self._unpack("Q", 0x28)
            shentsize, shnum, shstrndx = self._unpack("HHH", 0x3A)
        else:
            (shoff,) = self._unpack("I", 0x20)
            shentsize, shnum, shstrndx = self._unpack("HHH", 0x2E)
        if shentsize < (64 if self.is_64 else 40) or shnum == 0 or shstrndx >= shnum:
            raise ObjectFileError("malformed section header table")
        self._check(shoff, shentsize * shnum)
        raw = []
        for k in range(shnum):
            at = shoff + k * shentsize
            if self.is_64:
                name, _type = self._unpack("II", at)
                offset, size = self._unpack("QQ", at + 0x18)
            else:
                name, _type = self._unpack("II", at)
                offset, size = self._unpack("II", at + 0x10)
            nobits = _type == 8  # SHT_NOBITS (.bss) occupies no bytes in the file
            if not nobits:
                self._check(offset, size)
            raw.append((name, offset, 0 if nobits else size))
        _, str_off, str_size = raw[shstrndx]
        self.sections: dict[str, tuple[int, int]] = {}
        for name, offset, size in raw:
            if name >= str_size:
                raise ObjectFileError("section name outside the string table")
            end = data.find(b"\0", str_off + name, str_off + str_size)
            if end < 0:
                raise ObjectFileError("unterminated section name")
            self.sections[data[str_off + name:end].decode("latin-1")] = (offset, size)

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > len(self._data):
            raise ObjectFileError(f"{size} bytes at {offset} lie outside the object "
                                  f"({len(self._data)} bytes)")

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        layout = struct.Struct(self._end + fmt)
        self._check(offset, layout.size)
        return layout.unpack_from(self._data, offset)

    def section(self, name: str) -> bytes | None:
        where = self.sections.get(name)
        if where is None:
            return None
        offset, size = where
        return self._data[offset:offset + size]
