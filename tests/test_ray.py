"""The Ray back end passes the same invariants as worker processes (issue 8).

A local Ray cluster (2 CPUs) is started once for this module. Ray is a dev dependency, so a
missing Ray fails these tests loudly rather than skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

import shardload
from shardload import ConfigurationError, RequestStrategy
from shardload.testing.server import body_for

from .conftest import files_under, make_download, temp_files


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def urls_for(srv, n: int, path: str = "bytes/{size}?name=r{i}") -> list[str]:
    return [f"{srv.base_urls[i % 4]}/" + path.format(size=100 + i % 9, i=i) for i in range(n)]


def test_ray_downloads_every_url_once_with_the_right_file(srv, home):
    urls = [*urls_for(srv, 120), "ftp://nope/x", srv.base_urls[0] + "/status/404"]
    bundles = shardload.swarm(urls, download=make_download(home), backend="ray", processes=2)
    assert [b.url for b in bundles] == urls
    assert [b.state for b in bundles] == ["written"] * 120 + ["failed", "failed"]
    for i, bundle in enumerate(bundles[:120]):
        with open(bundle.file_path, "rb") as f:
            assert f.read() == body_for(100 + i % 9, f"r{i}")
    assert all(n == 1 for p, n in srv.stats()["paths"].items() if p.startswith("/bytes/"))
    assert len(files_under(home)) == 120
    assert ".shardload-tmp" not in os.listdir(home)  # the run ends with home as downloaded


def test_ray_per_host_limit_is_exact(srv, home):
    urls = urls_for(srv, 40, "slow/60/q{i}")
    strategy = RequestStrategy(concurrent=2)
    bundles = shardload.swarm(
        urls, download=make_download(home, strategy), backend="ray", processes=2
    )
    assert all(b.ok for b in bundles)
    assert max(h["max_concurrency"] for h in srv.stats()["hosts"].values()) == 2


def test_an_actor_killed_mid_run_loses_nothing(srv, home):
    urls = urls_for(srv, 160, "slow/40/k{i}")
    strategy = RequestStrategy(concurrent=4)
    seen = []
    killed = False
    for bundle in shardload.each(
        urls, download=make_download(home, strategy), backend="ray", processes=2
    ):
        seen.append(bundle)
        if len(seen) == 15 and not killed:
            names = [
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("shardload-")
            ]
            assert names
            ray.kill(ray.get_actor(names[0], namespace=None), no_restart=True)
            killed = True
    assert killed
    assert sorted(b.url for b in seen) == sorted(urls)
    assert len(seen) == len(urls)
    assert all(b.ok for b in seen), {b.error_kind for b in seen}
    assert temp_files(home) == []


def test_info_stays_the_callers_object(srv, home):
    items = [object() for _ in range(4)]  # the caller gets its own objects back, not copies
    url_map = {id(o): f"{srv.base_urls[i]}/links/{i}" for i, o in enumerate(items)}
    bundles = shardload.swarm(
        items,
        download=make_download(home),
        url_map=lambda o: url_map[id(o)],
        backend="ray",
        processes=2,
    )
    assert [b.info for b in bundles] == items


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="backend"):
        shardload.swarm(["http://127.0.0.2/"], backend="spark")


def test_missing_ray_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'shardload\[ray\]'"):
        shardload.swarm(["http://127.0.0.2/"], backend="ray", processes=2)


def test_ray_is_not_imported_by_default():
    code = "import shardload, sys; print('ray' in sys.modules)"
    out = os.popen(f'{sys.executable} -c "{code}"').read().strip()
    assert out == "False"


def test_a_cluster_that_cannot_be_reached_is_a_clear_error(monkeypatch):
    from shardload.executors import ray as backend

    def refused(**options):
        raise ConnectionError(f"no cluster at {options['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ConfigurationError, match="cannot start or reach the Ray cluster at"):
        backend.ensure_ray("ray://127.0.0.9:1")


@pytest.mark.parametrize("given", ["argument", "RAY_ADDRESS"])
def test_an_address_nobody_listens_at_fails_at_once(closed_port, given):
    """ray.init would retry such an address for minutes (from RAY_ADDRESS too, when no
    address is given: the CLI hung); it is refused before Ray is asked.
    In a fresh interpreter: this one may hold another test's Ray instance."""
    address = f"127.0.0.1:{closed_port}"
    code = (
        "import ray\n"
        "from shardload.errors import ConfigurationError\n"
        "from shardload.executors.ray import ensure_ray\n"
        "try:\n"
        f"    ensure_ray({address if given == 'argument' else None!r})\n"
        "except ConfigurationError as exc:\n"
        "    print('REFUSED', exc, ray.is_initialized())\n"
    )
    env = {**os.environ, "RAY_ADDRESS": address} if given == "RAY_ADDRESS" else None
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert out.stdout.startswith("REFUSED"), out.stderr[-2000:]
    assert f"nothing answers at 127.0.0.1:{closed_port}" in out.stdout
    assert out.stdout.rstrip().endswith("False")  # Ray was never initialised


def test_an_address_that_answers_but_is_no_ray_head_fails_at_once(tmp_path):
    """A web server (a mistyped port, the dashboard's) accepts the connection, and ray.init
    then waited on it for minutes; it is refused before Ray is asked. A real head's GCS
    passes the same check."""
    import http.server
    import threading

    from shardload.executors.ray import _check_reachable

    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigurationError, match="answers, but not as a Ray head"):
            _check_reachable(f"127.0.0.1:{web.server_address[1]}")
    finally:
        web.shutdown()
        web.server_close()
    _check_reachable(ray.get_runtime_context().gcs_address)  # the module's own local Ray


def test_ray_init_leaves_the_callers_signal_handlers_alone():
    """ray.init installs its own SIGTERM handler (sys.exit(15)): the CLI's clean stop then
    exited 15 with no summary. In a fresh interpreter, which starts its own local Ray."""
    code = (
        "import signal, ray\n"
        "from shardload.executors.ray import ensure_ray\n"
        "def mine(signum, frame): pass\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "ensure_ray(None)\n"
        "try:\n"
        "    print('KEPT', signal.getsignal(signal.SIGTERM) is mine)\n"
        "finally:\n"
        "    ray.shutdown()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "KEPT True" in out.stdout, out.stderr[-2000:]


class HoldsALock(shardload.DownloadStrategy):
    def __init__(self, home: str) -> None:
        super().__init__(home=home)
        import threading

        self.lock = threading.Lock()


def test_a_strategy_ray_cannot_send_is_a_configuration_error(srv, home):
    download = shardload.AioDownload(download_strategy=HoldsALock(home))
    with pytest.raises(ConfigurationError, match="serialisable to run in Ray actors"):
        shardload.swarm(urls_for(srv, 4), download=download, backend="ray", processes=2)


def test_actors_that_fill_the_cluster_hash_bodies_as_read(srv, home):
    """One actor per CPU of the cluster or more: each hashes bodies as it reads them (as worker
    processes that fill a machine's cores do); fewer leave the hashing to the writer thread."""
    from .test_hashing import modes

    assert modes(srv, home, backend="ray", processes=2) == {"True"}
    assert modes(srv, home, backend="ray", processes=1) == {"False"}


class LoadsOnlyInTheDriver:
    """Loads in the caller, and raises when a Ray worker process unpickles it."""

    def __init__(self) -> None:
        self.state = 1  # pickle calls __setstate__ only for a state that is not empty

    def __setstate__(self, state: dict[str, object]) -> None:
        if ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            raise RuntimeError("this object cannot be loaded in a Ray actor")
        self.__dict__.update(state)


@pytest.mark.timeout(120)
def test_a_job_an_actor_cannot_load_fails_alone_and_the_run_ends(srv, home):
    """The actor's submit failed as it unpickled the batch, nobody looked at it, and the run
    waited for ever on the batch's jobs."""
    urls = urls_for(srv, 8)
    bundles = shardload.swarm(
        [
            shardload.Bundle(u, info=LoadsOnlyInTheDriver() if i == 5 else None)
            for i, u in enumerate(urls)
        ],
        download=make_download(home),
        backend="ray",
        processes=2,
    )
    states = [(b.state, b.error_kind) for b in bundles]
    assert states[5] == ("failed", "worker_crash"), bundles[5].error_message
    assert states[:5] + states[6:] == [("written", None)] * 7


def test_a_run_closed_mid_stream_tells_every_file_it_left(srv, home):
    """As with worker processes, after close() the yielded bundles and ``unread`` name every
    file on disk. The stop cancelled each actor's poll, dropping the results it carried and
    those the actor's worker sent as it stopped, and a batch that reached an actor after its
    stop was still downloaded: 3 to 49 files a run that no bundle told of (3 of 3 runs)."""
    urls = [f"{srv.base_urls[i % 4]}/slow/20/m{i}" for i in range(3_000)]
    strategy = RequestStrategy(concurrent=16)
    run = shardload.each(urls, download=make_download(home, strategy), backend="ray", processes=2)
    yielded = [next(run) for _ in range(300)]
    run.close()
    told = {os.path.relpath(b.file_path, home) for b in yielded + run.unread if b.ok}
    assert told == files_under(home), (len(told), len(files_under(home)))
    assert len({b.seq for b in yielded + run.unread}) == len(yielded) + len(run.unread)
    assert next(run, None) is None and temp_files(home) == []
