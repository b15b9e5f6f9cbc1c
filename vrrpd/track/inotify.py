"""The three inotify calls track_file needs, via ctypes (the stdlib has none)."""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Iterable


class Inotify:
    """An inotify descriptor (non-blocking) watching directories for the
    changes that can change a file's content: written, moved, deleted."""
    IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE = 0x8, 0x40, 0x80, 0x200
    IN_Q_OVERFLOW, IN_ISDIR = 0x4000, 0x40000000
    MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
    EVENT = struct.Struct("iIII")

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, directory: str) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self.MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        return wd

    def events(self) -> Iterable[tuple[int, int, str]]:
        """(wd, mask, name) for everything queued now."""
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            off = 0
            while off + self.EVENT.size <= len(buf):
                wd, mask, _cookie, length = self.EVENT.unpack_from(buf, off)
                off += self.EVENT.size
                name = buf[off:off + length].rstrip(b"\0").decode(errors="surrogateescape")
                off += length
                yield wd, mask, name

    def close(self) -> None:
        os.close(self.fd)
