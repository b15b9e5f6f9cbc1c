"""Ten threads scrape the daemon's metrics at 127.0.0.1:9650, argv ROUNDS times each;
prints the HTTP status codes seen, how many were 200 and the largest exposition's size."""
import sys
import threading
import urllib.error
import urllib.request

codes, sizes = [], []


def scrape():
    for _ in range(int(sys.argv[1])):
        try:
            r = urllib.request.urlopen('http://127.0.0.1:9650/metrics', timeout=30)
            sizes.append(len(r.read()))
            codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)


threads = [threading.Thread(target=scrape) for _ in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted(set(codes)), codes.count(200), max(sizes or [0]))
