"""Writing a fetch's bytes into its partial, and what a failed write means.

Writes go out in pieces of ``_WRITE_PIECE`` with ``os.pwrite`` of the worker's own buffer (no copy). A
disk error becomes vcache's own through :func:`vcache.cache.translate_os_error` (the one errno mapping):
:class:`~vcache.errors.DiskFull` or :class:`~vcache.errors.CacheNotWritable`, the partial kept for a
resume; any other write error is a :class:`~vcache.errors.TransferError`.

This module never decides what is complete and never writes outside the partial's data file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from vcache.cache import translate_os_error
from vcache.errors import TransferError

#: Writes go to the file in pieces of at most this size. The page cache sizes its folios by the write: a
#: 2 MiB pwrite gets 2 MiB folios, whose high-order allocations on a VM with free page reporting
#: (virtio-balloon, this Firecracker machine) come from memory the host has taken back and must fault in
#: again. Measured (4 x 256 MiB, 2 MiB buffers, in-process, 3 runs each): whole-buffer writes 2.4-2.75 s
#: wall with 2.7-3.0 s of system time; 64-512 KiB pieces 1.42-1.70 s with 0.7-0.8 s, memory warm or cold.
#: The extra system calls cost a few milliseconds per GiB.
_WRITE_PIECE = 256 * 1024


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        # may be short, e.g. at RLIMIT_FSIZE (the next call then gets EFBIG)
        n = os.pwrite(fd, view[:_WRITE_PIECE], offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        offset += n


def _disk_error(exc: OSError, path: str, where: Path) -> TransferError:
    """The error for ``exc``, raised while writing ``path``'s partial in the directory ``where``."""
    mapped = translate_os_error(
        exc,
        f"{path}: writing into {where}",
        where=where,
        then="the partial is kept and the download resumes from it next time",
        path=path,
    )
    if isinstance(mapped, TransferError):
        return mapped
    return TransferError(f"{path}: writing into {where} failed ({exc})", path=path)
