"""A session of the python-etcd3 client library (Debian's python3-etcd3 0.12) against
one server: every call an application commonly makes, printed one result per line so
that two servers' transcripts can be compared line by line.

Usage: python3 python_etcd3.py HOST PORT
"""

import sys
import threading
import time

import etcd3


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = etcd3.client(host=host, port=port, timeout=10)

    def say(*parts):
        print(*parts, flush=True)

    # KV.
    c.put("foo", "bar")
    value, meta = c.get("foo")
    say("get", value, meta.key, meta.version, meta.create_revision)
    c.put("foo", "baz")
    value, meta = c.get("foo")
    say("get after put", value, meta.version, meta.mod_revision)
    say("get missing", c.get("missing"))
    for i in range(5):
        c.put("p/%d" % i, str(i))
    say("get_prefix", [(v, m.key) for v, m in c.get_prefix("p/")])
    say("get_prefix descend", [m.key for _, m in c.get_prefix("p/", sort_order="descend")])
    say("get_range", [m.key for _, m in c.get_range("p/1", "p/3")])
    say("get_all", len(list(c.get_all())))
    say("delete", c.delete("p/0"), c.delete("nope"))
    say("delete_prefix", c.delete_prefix("p/").deleted)
    say("replace", c.replace("foo", "baz", "qux"), c.replace("foo", "baz", "x"))

    # Transactions.
    ok, responses = c.transaction(
        compare=[c.transactions.value("foo") == "qux"],
        success=[c.transactions.put("t", "1"), c.transactions.get("foo")],
        failure=[c.transactions.get("foo")],
    )
    say("txn", ok, len(responses), [(v, m.key) for v, m in responses[1]])
    ok, responses = c.transaction(
        compare=[c.transactions.version("t") > 5],
        success=[],
        failure=[c.transactions.get("t"), c.transactions.delete("t")],
    )
    say("txn failure branch", ok, [(v, m.key) for v, m in responses[0]])
    say("t after txn", c.get("t"))

    # Leases.
    lease = c.lease(30)
    c.put("leased", "v", lease=lease)
    say("lease", lease.granted_ttl, 25 <= lease.remaining_ttl <= 30, lease.keys)
    refreshed = lease.refresh()
    say("lease refresh", refreshed[0].TTL)
    say("leased key", c.get("leased")[0])
    lease.revoke()
    say("after revoke", c.get("leased"))

    # Watch with a callback: a put and a delete, in order.
    events = []
    done = threading.Event()

    def callback(response):
        events.extend(response.events)
        if len(events) >= 2:
            done.set()

    watch_id = c.add_watch_callback("w", callback)
    c.put("w", "1")
    c.delete("w")
    done.wait(10)
    say("watch", [(type(e).__name__, e.key, e.value) for e in events])
    c.cancel_watch(watch_id)

    # Watch history from revision 1 with an iterator.
    iterator, cancel = c.watch("foo", start_revision=1)
    history = []
    for event in iterator:
        history.append((type(event).__name__, event.value, event.mod_revision))
        if len(history) == 3:
            cancel()
    say("watch history", history)

    # Watch a prefix.
    iterator, cancel = c.watch_prefix("q/")
    threading.Thread(target=lambda: (time.sleep(0.5), c.put("q/1", "a"))).start()
    for event in iterator:
        say("watch_prefix", type(event).__name__, event.key, event.value)
        cancel()

    # Locks (built on leases and transactions by the library).
    with c.lock("l", ttl=10) as lock:
        say("lock held", lock.is_acquired())
    # Debian's build of the library cannot wait for a held lock (its retry helper
    # fails), so contention is shown through the lock's owner instead.
    first = c.lock("l2", ttl=10)
    second = c.lock("l2", ttl=10)
    say("lock first", first.acquire(timeout=5))
    say("lock owned by the other", second.is_acquired(), first.is_acquired())
    say("lock first released", first.release(), first.release())
    say("lock second after release", second.acquire(timeout=5), second.is_acquired())
    second.release()

    # Cluster and maintenance.
    members = list(c.members)
    say("members", len(members), [len(m.peer_urls) for m in members])
    status = c.status()
    say("status", status.version, status.leader.id == members[0].id)
    revision = c.get("foo")[1].mod_revision
    c.compact(revision)
    try:
        for _ in c.watch("foo", start_revision=1)[0]:
            break
        say("watch compacted", "no error")
    except Exception as e:  # the library raises on a compacted watch
        say("watch compacted", type(e).__name__)

    # Errors the library maps to its own exceptions.
    try:
        c.put("", "v")
        say("empty key", "accepted")
    except Exception as e:
        say("empty key", type(e).__name__)
    try:
        c.lease(30, lease_id=lease.id)
        c.lease(30, lease_id=lease.id)
        say("duplicate lease", "accepted")
    except Exception as e:
        say("duplicate lease", type(e).__name__)
    c.close()


if __name__ == "__main__":
    main()
