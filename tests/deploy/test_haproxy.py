"""deploy/haproxy/haproxy.cfg in front of three `llmserve run` instances on the tiny model, under 16
streaming clients (issue 17's acceptance, loopback only):

- a rolling restart (each instance SIGTERMed, started again, back in rotation) fails no request,
  every stream complete; a loading instance takes no traffic until /ready says so;
- `kill -9` of one instance fails only streams it was serving; requests after it succeed, and it
  gets traffic again once back;
- with X-Session-ID, a conversation's next turn lands on the same instance and hits its prefix cache.

The counts are printed (pytest -s) and asserted."""

from __future__ import annotations

import contextlib
import time

import httpx

from tests.deploy.conftest import DRAIN_GRACE_S
from tests.deploy.lb_cluster import Cluster, Load, haproxy_config, stream_once

HEALTH_WINDOW_S = 2.0  # fall x inter in haproxy.cfg


def test_the_documented_config_is_only_readdressed() -> None:
    text = haproxy_config(9999, {"a": 1, "b": 2})
    assert "bind 127.0.0.1:9999" in text and "server a 127.0.0.1:1\n    server b 127.0.0.1:2\n" in text
    for line in ("option httpchk GET /ready", "default-server check inter 1s fall 2 rise 2", "retries 3",
                 "timeout server 10m", "stick on req.hdr(X-Session-ID)"):
        assert line in text
    assert "retry-on" not in text  # the plain setup: connection failures retried, 503s never


def test_rolling_restart_under_load_fails_no_request(cluster: Cluster) -> None:
    with Load(cluster.url, clients=16) as load:
        time.sleep(1.0)
        for name, instance in cluster.instances.items():
            signalled = time.monotonic()
            assert instance.terminate() == 0
            drained = time.monotonic() - signalled
            instance.start()
            instance.wait_ready()
            loaded = time.monotonic()
            back = cluster.wait_in_rotation(load, name, loaded)
            served_while_down = load.served_since(signalled + DRAIN_GRACE_S, name) - load.served_since(loaded, name)
            print(f"{name}: drained in {drained:.1f} s, ready after {loaded - signalled:.1f} s, "
                  f"back in rotation {back:.1f} s later; requests it served while loading: {served_while_down}")
            assert served_while_down == 0
        time.sleep(1.0)
    failures = load.failures()
    print(f"rolling restart: {len(load.results)} requests, {len(failures)} failed "
          f"{[f.detail for f in failures[:5]]}")
    assert len(load.results) > 100
    assert failures == []


def test_kill_9_fails_only_its_streams_and_it_returns(cluster: Cluster) -> None:
    victim = cluster.instances["box2"]
    with Load(cluster.url, clients=16, max_tokens=48) as load:
        time.sleep(1.5)
        killed = time.monotonic()
        victim.kill()
        dead = time.monotonic()  # the process is gone by now
        time.sleep(HEALTH_WINDOW_S + 1.0)
        victim.start()
        victim.wait_ready()
        back = cluster.wait_in_rotation(load, "box2", time.monotonic())
        time.sleep(0.5)
    failures = load.failures()
    after = [r for r in load.results if r.started > dead]
    print(f"kill -9 of box2: {len(load.results)} requests, {len(failures)} failed (its in-flight streams), "
          f"{sum(r.ok for r in after)} of {len(after)} started after the kill succeeded; back in {back:.1f} s")
    # In flight at the kill: streaming from box2, or sent to it and not yet answered (HAProxy's 502,
    # which carries no X-Served-By).
    assert all(f.served_by in ("box2", "") and f.started < dead and f.ended > killed for f in failures), [
        (f.served_by, round(f.started - killed, 2), round(f.ended - killed, 2), f.detail[:40]) for f in failures]
    assert len(failures) <= 16  # at most one stream per client was in flight
    assert all(r.ok for r in after)  # a refused connection is retried on another box


def test_session_affinity_reuses_the_prefix_cache(cluster: Cluster) -> None:
    history = "The user asks about load balancers and prefix caches. " * 12
    with httpx.Client(timeout=60) as client:
        for session in ("conversation-a", "conversation-b"):
            headers = {"X-Session-ID": session}
            body = {"model": "tiny", "prompt": history, "max_tokens": 8, "ignore_eos": True, "stream": True}
            first = stream_once(client, cluster.url, body, headers)
            assert first.ok
            box = cluster.instances[first.served_by]
            hits = box.metric("llmserve_gateway_prefix_cache_hits_total")
            follow_ups = [stream_once(client, cluster.url, {**body, "prompt": history + f" Turn {turn}."}, headers)
                          for turn in range(3)]
            gained = box.metric("llmserve_gateway_prefix_cache_hits_total") - hits
            print(f"{session}: turns on {[first.served_by] + [r.served_by for r in follow_ups]}, "
                  f"prefix-cache hits on {first.served_by}: +{gained:.0f} tokens")
            assert all(r.ok and r.served_by == first.served_by for r in follow_ups)
            assert gained >= 3 * 16 * 4  # each follow-up reused at least 4 full blocks of its prompt


def test_without_the_header_requests_spread(cluster: Cluster) -> None:
    with Load(cluster.url, clients=6) as load:
        time.sleep(3.0)
    boxes = {r.served_by for r in load.results if r.ok}
    assert boxes == set(cluster.instances), boxes
    with contextlib.suppress(Exception):
        print(f"spread: {len(load.results)} requests over {sorted(boxes)}")
