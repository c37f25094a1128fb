"""The passage store's backends behave alike, on a real LMDB and a real redis-server: pinned entries replace and
stay, on-demand entries never replace and may go, a full LMDB evicts only on-demand entries oldest first, several
processes share one LMDB, and a store that cannot be reached says which one."""

import multiprocessing
import os
import uuid

import pytest

from nestrank.serving.pipeline.passage_store import (
    LmdbStore,
    MemoryStore,
    RedisStore,
    StoreError,
    StoreFullError,
    open_store,
    parse_bytes,
    with_states,
)


@pytest.fixture(params=["memory", "lmdb", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "lmdb":
        return open_store(f"lmdb://{tmp_path}/store?map_size=64MiB")
    return open_store(request.getfixturevalue("redis_server").url)


def keys(n):
    prefix = uuid.uuid4().hex[:8]  # the session's redis-server is shared: keys of one test only
    return [f"{prefix}:{i}".encode() for i in range(n)]


def test_pinned_replaces_and_on_demand_never_does(store):
    a, b, c = keys(3)
    store.put_many({a: b"first", b: b"cached"}, pinned=False)
    store.put_many({a: b"second"}, pinned=False)  # content-addressed values never change: the first stays
    assert store.get_many([a, b, c]) == [b"first", b"cached", None]
    store.put_many({a: b"pinned"}, pinned=True)
    store.put_many({a: b"late on-demand write"}, pinned=False)
    assert store.get_many([a]) == [b"pinned"]
    assert store.pin_many([b, c]) == [True, False]
    assert store.get_many([b, c]) == [b"cached", None]
    store.delete_many([a, b, c])
    assert store.get_many([a, b]) == [None, None]
    assert store.get_many([]) == [] and store.pin_many([]) == []


def test_redis_on_demand_entries_expire_and_pinned_ones_do_not(redis_server):
    store = open_store(redis_server.url + "?cache_ttl_s=3600")
    cached, pinned, later = keys(3)
    store.put_many({cached: b"x", later: b"y"}, pinned=False)
    store.put_many({pinned: b"z"}, pinned=True)
    assert 0 < store.client.ttl(cached) <= 3600 and store.client.ttl(pinned) == -1
    store.pin_many([later])
    assert store.client.ttl(later) == -1  # `volatile-lru` can no longer evict it


def test_a_full_lmdb_evicts_on_demand_entries_oldest_first_and_never_pinned_ones(tmp_path):
    store = open_store(f"lmdb://{tmp_path}/small?map_size=4MiB")
    pinned = keys(20)
    store.put_many({k: os.urandom(20_000) for k in pinned}, pinned=True)
    cached = keys(400)
    for key in cached:  # 8 MB of on-demand values into a 4 MiB map
        store.put_many({key: os.urandom(20_000)}, pinned=False)
    assert store.used_bytes() <= LmdbStore.HIGH_WATER * store.map_size + 100_000
    assert all(v is not None for v in store.get_many(pinned))
    present = [v is not None for v in store.get_many(cached)]
    assert present[-1] and not present[0]  # the newest stayed, the oldest went
    assert present == sorted(present)  # in insertion order
    with pytest.raises(StoreFullError, match="larger map_size"):
        store.put_many({k: os.urandom(20_000) for k in keys(300)}, pinned=True)  # pinned alone cannot fit


def _write_from_another_process(path, key, value):
    open_store(f"lmdb://{path}").put_many({key: value}, pinned=True)


def test_processes_share_one_lmdb(tmp_path):
    store = open_store(f"lmdb://{tmp_path}/shared")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as each Triton stub is
    child = context.Process(target=_write_from_another_process, args=(tmp_path / "shared", b"k", b"from the child"))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and store.get_many([b"k"]) == [b"from the child"]


def test_an_unreachable_redis_is_a_store_error_naming_it_without_its_password():
    port = __import__("nestrank.serving.launcher.server", fromlist=["free_ports"]).free_ports(1)[0]
    store = open_store(f"redis://:hunter2hunter2@127.0.0.1:{port}/0?timeout_s=0.2")
    with pytest.raises(StoreError) as caught:
        store.get_many([b"k"])
    assert f"redis://:***@127.0.0.1:{port}/0" in str(caught.value) and "hunter2" not in str(caught.value)
    assert "hunter2" not in store.url


@pytest.mark.parametrize(
    "url, message",
    [
        ("lmdb://relative/path", "absolute path"),
        ("lmdb:///tmp/x?size=1", "unknown options"),
        ("lmdb:///tmp/x?map_size=lots", "not a size"),
        ("postgres://db", "the scheme must be"),
        ("memory://?size=1", "unknown options"),
        ("lmdb:///tmp/x?states=int4", "states=int4; choose one of float16, int8"),
        ("redis://:hunter2@127.0.0.1:1/0?states=bf16", "states=bf16; choose one of float16, int8"),
    ],
)
def test_bad_store_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


def test_every_store_url_says_how_states_are_held(tmp_path, redis_server):
    urls = ["memory://", f"lmdb://{tmp_path}/store?map_size=64MiB", redis_server.url + "?timeout_s=0.3"]
    for url in urls:
        assert open_store(url).states == "float16"  # the default
        store = open_store(with_states(url, "int8"))
        assert store.states == "int8"
        store.put_many({b"probe": b"1"}, pinned=False)  # the option went nowhere else (redis-py never saw it)
        assert store.get_many([b"probe"]) == [b"1"]
    assert with_states(urls[1], "int8") == f"lmdb://{tmp_path}/store?map_size=64MiB&states=int8"
    assert with_states("memory://?states=int8", "int8") == "memory://?states=int8"
    with pytest.raises(ValueError, match="says states=int8, and --passage-states says float16"):
        with_states("memory://?states=int8", "float16")
    with pytest.raises(ValueError, match="choose one of float16, int8"):
        with_states("memory://", "int4")


def test_sizes():
    assert parse_bytes("16GiB") == 16 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("4096") == 4096
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
