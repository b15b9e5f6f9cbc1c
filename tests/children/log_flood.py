"""vrrpd's logging set-up, then argv N log lines of 100 bytes while nobody reads stderr;
prints 'returned' once logging returned, then waits for a line on stdin."""
import logging
import sys

from vrrpd.ops import logs

logs.setup()
log = logging.getLogger("vrrpd.test")
for i in range(int(sys.argv[1])):
    log.info("line %d %s", i, "x" * 100)
print("returned", flush=True)
sys.stdin.readline()
