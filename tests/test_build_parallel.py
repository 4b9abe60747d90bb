"""The ordered, bounded process pool behind the image work."""

import os

from tfrecords_builder.parallel import OrderedPool


def square(x):
    return x * x


def die_in_worker(task):
    x, parent = task
    if os.getpid() != parent:
        os._exit(3)  # a worker killed midway (OOM killer, segfault in a decoder)
    return -x


def test_results_keep_task_order_and_window_bounds_memory():
    with OrderedPool(2, window_per_worker=2, chunk=3) as pool:
        consumed = []

        def tasks():
            for i in range(50):
                # never more than the window ahead of what was consumed
                assert i - len(consumed) <= pool.window + pool.chunk
                yield i

        for r in pool.imap(square, tasks()):
            consumed.append(r)
    assert consumed == [i * i for i in range(50)]


def test_dead_workers_fall_back_to_this_process(capsys):
    with OrderedPool(2, chunk=4) as pool:
        out = list(pool.imap(die_in_worker, ((i, os.getpid()) for i in range(30))))
    assert out == [-i for i in range(30)]
    assert pool.fallback and "continuing in this process" in capsys.readouterr().err


def test_one_worker_runs_in_process():
    pool = OrderedPool(1)
    assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]
    pool.close()
