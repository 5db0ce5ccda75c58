"""Strict safetensors header and layout parser (skeleton: types only; the parser is being written)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies in the data section."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, structurally valid header: tensors in data-offset order."""

    header_len: int
    tensors: tuple[TensorEntry, ...]
    metadata: Mapping[str, str] | None
    file_size: int

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data section (8 + header length)."""
        return 8 + self.header_len
