"""One query against many stored rows: ``rows @ q`` in one product against ``layout.dot_rows``'s blocks.

The exact path of a filtered search (``filters.exact_scan``) and the live-writes overlay
(``writelog.LiveIndex.search_overlay``) score a query against up to a few hundred thousand rows.
OpenBLAS splits one large matrix-vector product over its threads; on a busy machine the threads
wait for cores and the product takes far longer than one thread would. ``dot_rows`` cuts it into
blocks under that size. Both ways run here, alternately, on the same rows and queries (the
baseline in the same run); the ratio is one product's time over the blocks'.

    python benchmarks/dot_block_bench.py
"""

import argparse
import os
import time

import numpy as np

from amazon_visual.retrieval.layout import dot_rows


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="900x1280,1000x128,10000x128,100000x128,10000x1280")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"load before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    print("| rows x dim | one product p50 / p99 ms | dot_rows p50 / p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        n, dim = (int(x) for x in shape.split("x"))
        rows = rng.standard_normal((n, dim)).astype(np.float32)
        q = rng.standard_normal(dim).astype(np.float32)
        one, blocks = [], []

        def product(rows=rows, q=q):
            return rows @ q

        def blocked(rows=rows, q=q):
            return dot_rows(rows, q)

        for _ in range(4):  # alternate, so both see the same load
            one += timed(product, args.reps // 4)
            blocks += timed(blocked, args.reps // 4)
        a, b = np.percentile(one, [50, 99]), np.percentile(blocks, [50, 99])
        print(
            f"| {n:,} x {dim} | {a[0]:.2f} / {a[1]:.2f} | {b[0]:.2f} / {b[1]:.2f} | "
            f"{a[0] / b[0]:.1f}x | {a[1] / b[1]:.1f}x |"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
