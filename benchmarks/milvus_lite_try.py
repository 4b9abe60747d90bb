"""The bounded try of Milvus Lite that decided the live-write engine (BENCHMARKS.md, "Live writes").

Not a dependency of the package: run it in its own virtual environment::

    python -m venv /tmp/milvus-try/venv && /tmp/milvus-try/venv/bin/pip install milvus-lite pymilvus
    timeout 600 /tmp/milvus-try/venv/bin/python benchmarks/milvus_lite_try.py --n 100000 --db /tmp/milvus-try/m.db

It inserts ``--n`` random 128-d vectors with a price and a brand into an HNSW collection, times the
first filtered search, 20 more, how long one insert takes to be found, the resident memory; then
opens the same file from a second process while the first holds it.
"""

import argparse
import multiprocessing
import resource
import shutil
import time

import numpy as np


def bench(db, n, dim=128):
    from pymilvus import DataType, MilvusClient

    c = MilvusClient(db)
    schema = c.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("brand", DataType.VARCHAR, max_length=64)
    ip = c.prepare_index_params()
    ip.add_index(field_name="vec", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    c.create_collection("items", schema=schema, index_params=ip)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for s in range(0, n, 5000):
        x = rng.standard_normal((5000, dim)).astype(np.float32)
        c.insert(
            "items",
            [
                {"id": s + i, "vec": x[i].tolist(), "price": float(i % 100), "brand": f"b{i % 1000}"}
                for i in range(5000)
            ],
        )
    ins = time.perf_counter() - t
    print(f"inserted {n} in {ins:.2f} s ({n / ins:.0f} per second)", flush=True)
    q = rng.standard_normal(dim).astype(np.float32).tolist()
    t = time.perf_counter()
    r = c.search("items", [q], limit=10, filter='price < 10 and brand == "b7"', search_params={"params": {"ef": 64}})
    print(f"first filtered search: {time.perf_counter() - t:.2f} s, {len(r[0])} results", flush=True)
    t = time.perf_counter()
    for _ in range(20):
        c.search("items", [q], limit=10, filter="price < 50", search_params={"params": {"ef": 64}})
    print(f"filtered search: {(time.perf_counter() - t) / 20 * 1000:.1f} ms each (mean of 20)", flush=True)
    t = time.perf_counter()
    c.insert("items", [{"id": n + 1, "vec": q, "price": 1.0, "brand": "new"}])
    r = c.search("items", [q], limit=1, filter='brand == "new"')
    print(f"one insert found by a search after {time.perf_counter() - t:.2f} s", flush=True)
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    return c


def second_process(db):
    from pymilvus import MilvusClient

    try:
        MilvusClient(db)
        print("a second process opened the same file", flush=True)
    except Exception as e:  # what Milvus Lite raises varies: report it whatever it is
        print(f"a second process cannot open the file: {type(e).__name__}: {str(e)[:200]}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--db", default="/tmp/milvus-try/m.db")
    args = ap.parse_args()
    shutil.rmtree(args.db, ignore_errors=True)
    client = bench(args.db, args.n)
    p = multiprocessing.get_context("spawn").Process(target=second_process, args=(args.db,))
    p.start()
    p.join(120)
    client.close()


if __name__ == "__main__":
    main()
