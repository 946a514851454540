"""Enqueues argv[1] `peers.noop` tasks with `apply_async` on one producer
(Celery has no bulk publish) and prints `enqueue_secs=S version=V`, the
time of the publishes alone (the connection is made before the clock
starts)."""

import sys
import time

import celery

from tasks import app, noop

n = int(sys.argv[1])
with app.producer_or_acquire() as producer:
    producer.connection.ensure_connection()
    t = time.monotonic()
    for _ in range(n):
        noop.apply_async(producer=producer)
    secs = time.monotonic() - t
print(f"enqueue_secs={secs} version={celery.__version__}")
