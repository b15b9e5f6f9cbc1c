"""Give the C allocator's free memory back to the kernel.

Start-up and reloads build large short-lived structures (the configuration's
text, tokens and parse tree, the reader's pickles) among the long-lived
ones; once they are freed, glibc keeps their pages for reuse that a
steady-state daemon never makes.  malloc_trim(0) releases the free top of
the heap and, inside it, every free page (madvise).  pymalloc's arenas are
returned by Python itself once empty; this covers the rest (objects over
512 bytes, dict and list tables, the engine's buffers).  Other C libraries
(musl) have no malloc_trim: nothing to do there.
"""
from __future__ import annotations

import ctypes
from typing import Any

_trim: Any = None           # libc's malloc_trim; False where there is none


def _load():
    global _trim
    if _trim is None:
        try:
            libc = ctypes.CDLL(None)            # the C library the process runs on
            _trim = libc.malloc_trim
            _trim.argtypes = [ctypes.c_size_t]
            _trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            _trim = False
    return _trim


def trim() -> bool:
    """Release free heap pages; whether the allocator had any to release."""
    fn = _load()
    return bool(fn(0)) if fn else False
