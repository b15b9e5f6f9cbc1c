"""Scrape a /metrics URL from THREADS threads in parallel for SECONDS, each
scraping again as soon as its last answer arrived.

Run inside the daemon's namespace: `python scrape_storm.py URL THREADS SECONDS`.
Prints one JSON line: the status codes seen (with counts) and the largest body.
"""
from __future__ import annotations

import collections
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def main() -> None:
    url, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    codes: collections.Counter[int] = collections.Counter()
    sizes = [0]
    end = time.monotonic() + seconds

    def scrape() -> None:
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    sizes.append(len(r.read()))
                    codes[r.status] += 1
            except urllib.error.HTTPError as e:
                codes[e.code] += 1

    workers = [threading.Thread(target=scrape) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    print(json.dumps({"codes": dict(codes), "max_size": max(sizes)}))


if __name__ == "__main__":
    main()
