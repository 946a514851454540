"""The Celery peer of `cargo xtask bench peers` (benches/benches/peers.rs).

Run by the workers (`celery -A tasks worker --pool prefork -c 2`) and
imported by celery_enqueue.py. The task is a no-op that does one redis INCR
on PEERS_KEY with a connection each pool process opens on its first task
(after the fork); the run that takes the counter to 1 stores the wall-clock
time in microseconds at PEERS_KEY:t_first, the one that takes it to PEERS_N
at PEERS_KEY:t_last. REDIS_URL names the counter's server and db;
PEERS_BROKER the broker (that redis, or a RabbitMQ amqp:// URL), and
PEERS_QUEUE the queue (a fresh one per measurement on RabbitMQ).
"""

import os
import time

import redis
from celery import Celery

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
KEY = os.environ.get("PEERS_KEY", "peers:count")
N = int(os.environ.get("PEERS_N", "0"))

app = Celery("tasks", broker=os.environ.get("PEERS_BROKER", URL))
app.conf.task_default_queue = os.environ.get("PEERS_QUEUE", "celery")
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True

_conn = None


def conn():
    """This process's redis connection, opened on first use."""
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(URL)
    return _conn


def now_us():
    """Wall-clock microseconds since the epoch."""
    return time.time_ns() // 1000


@app.task(name="peers.noop")
def noop():
    """The benchmark's job: one INCR, and a time stamp at the first and last."""
    c = conn()
    v = c.incr(KEY)
    if v == 1:
        c.set(KEY + ":t_first", now_us())
    if v == N:
        c.set(KEY + ":t_last", now_us())
