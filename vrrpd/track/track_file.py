"""track_file (vrrp_track_file): reading a file's integer the way keepalived
does, init_file at start-up, and the watcher that reports each new value
(inotify on the file's directory; reading every second without inotify)."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Iterable

from vrrpd.config.model import TrackFile
from vrrpd.track.inotify import Inotify

log = logging.getLogger(__name__)


def parse_track_value(data: bytes) -> int:
    """strtol(buf, NULL, 0) as keepalived reads a track file: 0 on anything odd."""
    s = data.decode("ascii", "replace").lstrip(" \t\n\r\f\v")
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in "+-":
        s = s[1:]
    if s[:2].lower() == "0x":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdef"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    return sign * int(s[:n], base) if n else 0


def read_track_file(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        return parse_track_value(os.read(fd, 127))
    except OSError:
        return 0
    finally:
        os.close(fd)


def _path(tf: TrackFile) -> str:
    # The watcher is given only blocks with a `file` (a block without one is not watched).
    assert tf.file is not None
    return tf.file


def init_track_file(tf: TrackFile) -> None:
    """init_file [VALUE] [overwrite]: create (or overwrite) the file at startup."""
    path = _path(tf)
    if not tf.init_file or (os.path.exists(path) and not tf.init_overwrite):
        return
    try:
        with open(path, "w") as f:
            f.write(f"{tf.init_value}\n")
    except OSError as e:
        log.error("track_file %s: cannot initialise %s: %s", tf.name, tf.file, e)


class TrackFileWatcher:
    """Reads track files at start and whenever they are written, moved or deleted.

    on_value(name, value) is called on the loop: once for every file at
    start, then on each change of a file's value."""

    POLL_INTERVAL = 1.0          # only without inotify

    def __init__(self, on_value: Callable[[str, int], None]):
        self.on_value = on_value
        self.files: dict[str, TrackFile] = {}
        self.values: dict[str, int] = {}
        self._by_dir: dict[int, list[TrackFile]] = {}
        self._ino: Inotify | None = None
        self._poll: asyncio.TimerHandle | None = None

    def start(self, files: Iterable[TrackFile]) -> None:
        """Watch these (configured, with a `file`) track files."""
        loop = asyncio.get_running_loop()
        try:
            self._ino = Inotify()
            loop.add_reader(self._ino.fd, self._on_events)
        except (OSError, AttributeError) as e:
            log.warning("inotify unavailable (%s): reading track files every %.0f s",
                        e, self.POLL_INTERVAL)
            self._ino = None
        for tf in files:
            init_track_file(tf)
            self.files[tf.name] = tf
            if self._ino is not None:
                directory = os.path.dirname(os.path.abspath(_path(tf)))
                try:
                    self._by_dir.setdefault(self._ino.watch(directory), []).append(tf)
                except OSError as e:
                    log.error("track_file %s: cannot watch %s: %s", tf.name, directory, e)
            self._update(tf, read_track_file(_path(tf)), force=True)
        if self._ino is None:
            self._poll = loop.call_later(self.POLL_INTERVAL, self._poll_all)

    def stop(self) -> None:
        if self._ino is not None:
            asyncio.get_running_loop().remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None
        if self._poll is not None:
            self._poll.cancel()

    def _update(self, tf: TrackFile, value: int, force: bool = False) -> None:
        if force or self.values.get(tf.name) != value:
            self.values[tf.name] = value
            self.on_value(tf.name, value)

    def _on_events(self) -> None:
        if self._ino is None:
            return
        for wd, mask, name in self._ino.events():
            if mask & Inotify.IN_Q_OVERFLOW:          # lost events: re-read everything
                for tf in self.files.values():
                    self._update(tf, read_track_file(_path(tf)))
                continue
            if mask & Inotify.IN_ISDIR:
                continue
            for tf in self._by_dir.get(wd, ()):
                if os.path.basename(_path(tf)) == name:
                    gone = mask & (Inotify.IN_DELETE | Inotify.IN_MOVED_FROM)
                    self._update(tf, 0 if gone else read_track_file(_path(tf)))

    def _poll_all(self) -> None:
        for tf in self.files.values():
            self._update(tf, read_track_file(_path(tf)))
        self._poll = asyncio.get_running_loop().call_later(self.POLL_INTERVAL, self._poll_all)
