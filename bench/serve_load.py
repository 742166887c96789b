"""Latency of a running ``vstar serve`` (not part of ``make bench``; stdlib only).

    vstar serve runs/demo_ml100k/vstar/seed0 --port 8765 --threads 1 &
    python bench/serve_load.py PORT CONCURRENCY N DECODER K [N_ITEMS]
    python bench/serve_load.py 8765 8 300 beam 10

Sends N requests with random histories of 1-20 item ids "1".."N_ITEMS" (default 1682, MovieLens
100K) from CONCURRENCY client threads; prints p50/p95/p99 latency, throughput and the mean size
of the decode calls the requests were part of. The client runs on the same machine.
"""

import concurrent.futures as cf
import json
import random
import sys
import time
import urllib.request


def main(port: int, conc: int, n: int, decoder: str, k: int, n_items: int = 1682) -> None:
    url = f"http://127.0.0.1:{port}/recommend"
    rng = random.Random(0)
    bodies = [json.dumps({"history": [str(rng.randint(1, n_items))
                                      for _ in range(rng.randint(1, 20))],
                          "k": k, "decoder": decoder}).encode() for _ in range(n)]

    def one(body):
        t = time.perf_counter()
        req = urllib.request.Request(url, body, {"content-type": "application/json"})
        out = json.loads(urllib.request.urlopen(req).read())
        return 1000 * (time.perf_counter() - t), out["cost"]["batch_size"]

    one(bodies[0])                                   # warm-up
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(conc) as pool:
        res = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)

    def p(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    print(f"{decoder} k={k} concurrency={conc} n={n}: p50 {p(.5):.1f} ms, p95 {p(.95):.1f}, "
          f"p99 {p(.99):.1f}; {n / wall:.0f} req/s; mean batch {sum(r[1] for r in res) / n:.1f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), a[3], int(a[4]), *(int(x) for x in a[5:6]))
