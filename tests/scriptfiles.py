"""Script files for the script-runner and notify tests, and the records they leave:
a recorder script whose lines give each run's start order and arguments."""
import asyncio
import os
import time


def write_script(path, body, mode=0o755):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return str(path)


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Each notify script appends one line: its pid (allocated at fork, so pid order
# is start order -- completion order is a race), its $# and its arguments.
RECORDER = 'l="$$ $#"; for a; do l="$l <$a>"; done; echo "$l" >> {log}'


def recorded(log, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    rows = []
    for line in lines:
        pid, argc, args = (line + " ").split(" ", 2)
        rows.append((int(pid), int(argc), args.strip()))
    return sorted(rows)          # by pid: start order


async def read_kept_lines(fifo, path: str, total: int) -> list[str]:
    """Open a reader on the fifo and read until every line it kept of `total`
    (all but its drops) arrived, or 1 s passed; then close the fifo."""
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    got = b""
    for _ in range(200):
        await asyncio.sleep(0.005)
        try:
            got += os.read(reader, 1 << 20)
        except BlockingIOError:
            pass
        if fifo.queued == 0 and got.count(b"\n") == total - fifo.drops:
            break
    os.close(reader)
    await fifo.close()
    return got.decode().splitlines()
