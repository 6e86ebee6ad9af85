"""Starts filling a catdog file cache and stays alive until killed (for tests).

Usage: python _cache_worker.py KWARGS_JSON

Builds ``catdog.data.build_dataset(**kwargs)``, reads a few batches (so
TensorFlow's cache writer has created its lockfile and a partial cache),
prints ``caching`` and then sleeps until the test kills it.
"""

import json
import sys
import time


def main():
    from catdog import data
    ds = data.build_dataset(**json.loads(sys.argv[1]))
    iterator = iter(ds)
    for _ in range(2):
        next(iterator)
    print("caching", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
