"""Files on disk: atomic, contained, order-independent, and trustworthy for skip_cached."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

import shardload
from shardload import Bundle, DownloadStrategy, ErrorKind, RequestStrategy
from shardload.errors import DownloadFailed
from shardload.paths import absolute
from shardload.testing.server import body_for
from shardload.worker import files, tree
from shardload.worker import temp_files as temps

from .conftest import files_under, make_download, temp_files


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_skip_cached_after_success_makes_no_request(srv, home):
    url = srv.base_urls[0] + "/bytes/300?name=cache"
    (first,) = shardload.swarm([url], download=make_download(home))
    (second,) = shardload.swarm([url], download=make_download(home, skip_cached=True))
    assert first.state == "written" and second.state == "cached"
    assert second.file_path == first.file_path and second.bytes == 300
    assert srv.stats()["paths"]["/bytes/300?name=cache"] == 1
    assert "Cache hit" in second.status_msg


def test_skip_cached_after_a_failure_downloads_again(srv, home):
    """aiodownload left an empty file on failure, which skip_cached then trusted forever."""
    url = srv.base_urls[0] + "/flaky/after-fail/1/500"
    (first,) = shardload.swarm([url], download=make_download(home))
    assert first.state == "failed" and files_under(home) == set()
    (second,) = shardload.swarm([url], download=make_download(home, skip_cached=True))
    assert second.state == "written" and read(second.file_path).startswith(b"ok after 2")


@pytest.mark.parametrize("path", ["/status/500", "/truncate/5000", "/stall/10"])
def test_a_failure_never_destroys_an_earlier_good_copy(srv, home, path):
    target = os.path.join(home, "kept.bin")
    good = Bundle(srv.base_urls[0] + "/bytes/777", file_path=target)
    shardload.one(good, download=make_download(home))
    assert read(target) == body_for(777)
    bad = Bundle(srv.base_urls[0] + path, file_path=target)
    shardload.one(bad, download=make_download(home, shardload.RequestStrategy(timeout=0.5)))
    assert bad.state == "failed"
    assert read(target) == body_for(777)
    assert temp_files(home) == []


def test_preset_relative_file_path_is_under_home(srv, home):
    bundle = Bundle(srv.base_urls[0] + "/links/1", file_path="sub/dir/one.html")
    shardload.one(bundle, download=make_download(home))
    assert bundle.file_path == os.path.join(home, "sub", "dir", "one.html")
    assert os.path.isfile(bundle.file_path)


@pytest.mark.parametrize(
    "preset", ["../escape", "/etc/shardload-escape", "a/../../escape", ".", "a\x00b", "a\ud800b"]
)
def test_paths_outside_home_or_unwritable_are_refused(srv, home, preset):
    bundle = Bundle(srv.base_urls[0] + "/links/1", file_path=preset)
    shardload.one(bundle, download=make_download(home))
    assert bundle.state == "failed" and bundle.error_kind == ErrorKind.UNSAFE_PATH
    assert not os.path.exists(os.path.join(os.path.dirname(home), "escape"))
    assert not os.path.exists("/etc/shardload-escape")


@pytest.mark.parametrize(
    ("preset", "refused"),
    [
        ("n" * 255, False),
        ("d/" + "n" * 255, False),
        ("é" * 127, False),  # 254 bytes
        ("n" * 256, True),
        ("d/" + "n" * 300 + "/f", True),
        ("é" * 128, True),  # 128 characters, 256 bytes
    ],
)
def test_a_name_over_255_bytes_fails_before_any_request(srv, home, preset, refused):
    """It was downloaded, then failed as a disk error (ENAMETOOLONG), which counts as
    transient: every --retry-transient fetched the whole body again."""
    bundle = Bundle(srv.base_urls[0] + "/links/1", file_path=preset)
    shardload.one(bundle, download=make_download(home))
    if refused:
        assert (bundle.state, bundle.error_kind, bundle.attempts) == (
            "failed",
            ErrorKind.UNSAFE_PATH,
            0,
        )
        assert "over 255 bytes" in (bundle.error_message or "")
        assert sum(h["requests"] for h in srv.stats()["hosts"].values()) == 0
    else:
        assert bundle.state == "written", bundle.error_message


def test_a_path_over_path_max_fails_before_any_request(srv, tmp_path):
    """Each name fit, the whole did not: the file was written (folders are walked by
    descriptor) but could not be opened by its name, and skip_cached never found it."""
    home = tmp_path / ("h" * 200) / ("o" * 200) / ("m" * 200)
    home.mkdir(parents=True)
    deep = "/".join(["d" * 200] * 19)  # ~3,800 bytes below a ~700-byte home
    bundle = Bundle(srv.base_urls[0] + "/links/1", file_path=deep)
    shardload.one(bundle, download=make_download(str(home)))
    assert (bundle.error_kind, bundle.attempts) == (ErrorKind.UNSAFE_PATH, 0), bundle
    assert "the path is over 4095 bytes" in (bundle.error_message or "")
    assert sum(h["requests"] for h in srv.stats()["hosts"].values()) == 0


def test_a_path_to_a_files_displaced_place_means_the_file(srv, home):
    """``x/%file`` asked for moved the file of ``x`` aside onto itself and replaced it; it is
    where the file of ``x`` lives once ``x`` is a folder, so it means ``x``."""
    download = make_download(home)
    first = Bundle(srv.base_urls[0] + "/links/1", file_path="x")
    second = Bundle(srv.base_urls[0] + "/links/2", file_path="x/%file")
    shardload.one(first, download=download)
    shardload.one(second, download=download)
    assert first.ok and second.ok and second.file_path == os.path.join(home, "x")
    assert os.path.isfile(os.path.join(home, "x"))
    # Once x is a folder, that is where the file of x goes, asked for either way.
    third = Bundle(srv.base_urls[0] + "/links/3", file_path="x/y")
    again = Bundle(srv.base_urls[0] + "/links/4", file_path="x/%file")
    shardload.one(third, download=download)
    shardload.one(again, download=download)
    assert third.ok and again.ok and again.file_path == os.path.join(home, "x", "%file")
    assert hashlib.sha256(read(again.file_path)).hexdigest() == again.sha256
    assert os.path.isfile(os.path.join(home, "x", "y"))
    for path in ("x/%file/z", "%file"):
        inner = Bundle(srv.base_urls[0] + "/links/5", file_path=path)
        shardload.one(inner, download=download)
        assert inner.error_kind == ErrorKind.UNSAFE_PATH and "reserved" in inner.error_message


def test_custom_get_file_path_outside_home_is_refused(srv, home, tmp_path):
    outside = os.path.join(str(tmp_path), "outside.txt")

    class Escaping(DownloadStrategy):
        def get_file_path(self, bundle):
            return outside

    download = shardload.AioDownload(download_strategy=Escaping(home=home))
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=download)
    assert b.error_kind == ErrorKind.UNSAFE_PATH and not os.path.exists(outside)


def test_a_symlink_inside_home_is_never_followed_for_writing(srv, home, tmp_path):
    outside = os.path.join(str(tmp_path), "outside")
    os.makedirs(outside)
    host_dir = srv.base_urls[0].removeprefix("http://").replace(":", "_")
    os.symlink(outside, os.path.join(home, host_dir))
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=make_download(home))
    assert b.state == "failed" and b.error_kind == ErrorKind.UNSAFE_PATH
    assert os.listdir(outside) == []


def test_traversal_in_urls_stays_under_home(srv, home, tmp_path):
    base = srv.base_urls[0]
    host = base.removeprefix("http://").replace(":", "_")
    # Joined naively below home/<host>/any, each of these would land in tmp_path, outside home.
    # URL -> (its file relative to home, the path the server saw, which the file holds).
    expected = {
        base + "/any/../../../up1": (f"{host}/any/%2E%2E/%2E%2E/%2E%2E/up1", "/any/../../../up1"),
        base + "/any/%2e%2e/%2e%2e/%2E%2E/up2": (
            f"{host}/any/%=2E%=2E/%=2E%=2E/%=2E%=2E/up2",  # sent as escaped: apart from ".."
            "/any/%2E%2E/%2E%2E/%2E%2E/up2",  # escapes' hex upper-cased (RFC 3986 6.2.2)
        ),
        base + "/any/..%2F..%2F..%2Fup3": (
            f"{host}/any/..%2F..%2F..%2Fup3",
            "/any/..%2F..%2F..%2Fup3",
        ),
        base + "/any/..\\..\\..\\up4": (
            f"{host}/any/..%5C..%5C..%5Cup4",
            "/any/..%5C..%5C..%5Cup4",
        ),
    }
    bundles = shardload.swarm(list(expected), download=make_download(home))
    assert [b.state for b in bundles] == ["written"] * len(expected), [
        b.error_message for b in bundles
    ]
    for bundle in bundles:
        rel, served = expected[bundle.url]
        assert os.path.relpath(bundle.file_path, home) == rel
        assert os.path.realpath(bundle.file_path).startswith(os.path.realpath(home) + os.sep)
        assert read(bundle.file_path) == b"path " + served.encode()
    assert files_under(home) == {rel for rel, _ in expected.values()}
    assert temp_files(home) == []
    assert os.listdir(tmp_path) == [os.path.basename(home)]  # nothing written beside home


@pytest.mark.parametrize("order", ["file-first", "dir-first"])
def test_a_next_to_a_b_both_kept_layout_independent_of_order(srv, tmp_path, order):
    base = srv.base_urls[0]
    # /x (a file) and /x/y (needs x to be a directory), one per call to force the order.
    file_url, nested_url = base + "/any/x", base + "/any/x/y"
    first, second = (file_url, nested_url) if order == "file-first" else (nested_url, file_url)
    home = str(tmp_path / order)
    os.makedirs(home)
    shardload.swarm([first], download=make_download(home))
    shardload.swarm([second], download=make_download(home))
    bundles = shardload.swarm([file_url, nested_url], download=make_download(home))
    host = base.removeprefix("http://").replace(":", "_")
    assert files_under(home) == {f"{host}/any/x/%file", f"{host}/any/x/y"}
    assert [b.state for b in bundles] == ["written", "written"]
    assert read(bundles[0].file_path) == b"path /any/x"
    assert read(bundles[1].file_path) == b"path /any/x/y"


def test_swarm_points_a_bundle_at_its_file_moved_later_in_the_same_run(srv, home):
    """/x is written first (one request at a time, in order), then /x/y moves it to x/%file."""
    base = srv.base_urls[0]
    urls = [base + "/any/x", base + "/any/x/y", base + "/any/other"]
    bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    host = base.removeprefix("http://").replace(":", "_")
    assert [os.path.relpath(b.file_path, home) for b in bundles] == [
        f"{host}/any/x/%file",
        f"{host}/any/x/y",
        f"{host}/any/other",
    ]
    assert read(bundles[0].file_path) == b"path /any/x"


def test_trailing_slash_and_root_are_files(srv, home):
    """A trailing slash names a file too (the reserved %index), next to its siblings."""
    base = srv.base_urls[0]
    host = base.removeprefix("http://").replace(":", "_")
    urls = [base + "/any/dir/", base + "/any/dir/child", base + "/any/dir"]
    bundles = shardload.swarm(urls, download=make_download(home))
    assert [b.state for b in bundles] == ["written"] * 3
    assert [os.path.relpath(b.file_path, home) for b in bundles] == [
        f"{host}/any/dir/%index",
        f"{host}/any/dir/child",
        f"{host}/any/dir/%file",
    ]
    assert read(bundles[0].file_path) == b"path /any/dir/"
    # "http://h" and "http://h/" are one request on the wire, so one file.
    strategy = DownloadStrategy(home=home)
    assert strategy.get_file_path(Bundle(base)) == strategy.get_file_path(Bundle(base + "/"))


def test_query_strings_do_not_collide(srv, home):
    base = srv.base_urls[0]
    tails = ["/any/x?name=1", "/any/x_name_1", "/any/x?name=2"]
    bundles = shardload.swarm([base + t for t in tails], download=make_download(home))
    assert [b.state for b in bundles] == ["written"] * 3, [b.error_message for b in bundles]
    paths = [b.file_path for b in bundles]
    assert len(set(paths)) == 3
    assert [read(p) for p in paths] == [b"path " + t.encode() for t in tails]
    host = base.removeprefix("http://").replace(":", "_")
    expected = [f"{host}/any/x@name=1", f"{host}/any/x_name_1", f"{host}/any/x@name=2"]
    assert [os.path.relpath(p, home) for p in paths] == expected
    assert files_under(home) == set(expected)


def test_home_that_cannot_be_created_gives_a_disk_failure(srv, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory is needed")
    home = str(blocker / "home")
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=make_download(home))
    assert b.state == "failed" and b.error_kind == ErrorKind.DISK


def test_a_file_where_a_directory_is_needed_by_a_custom_path(srv, home):
    with open(os.path.join(home, "taken"), "w") as f:
        f.write("user data")
    bundle = Bundle(srv.base_urls[0] + "/links/1", file_path="taken/inner")
    shardload.one(bundle, download=make_download(home))
    # The layout rule moves the file aside rather than failing or overwriting it.
    assert bundle.ok
    assert read(os.path.join(home, "taken", "%file")) == b"user data"


@pytest.mark.parametrize(
    "pieces", [[], [b"a"], [b"ab", b"", b"cd"], [bytes([i % 256]) * 7 for i in range(3000)]]
)
def test_a_body_in_pieces_is_written_and_hashed_whole(tmp_path, pieces):
    """More pieces than one writev takes (1024) included."""
    import hashlib

    from shardload.worker.files import _write_and_hash

    path = tmp_path / "body"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    digest = hashlib.sha256()
    _write_and_hash(fd, pieces, digest)
    os.close(fd)
    assert path.read_bytes() == b"".join(pieces)
    assert digest.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_commit_under_a_root_home_walks_whole_directory_names(tmp_path, monkeypatch):
    """home '/' has no trailing part to cut: the first directory is /<name>, not /<name[1:]>."""
    made: list[str] = []
    real = tree._enter
    monkeypatch.setattr(
        tree,
        "_enter",
        lambda parent, name, path, home: made.append(path) or real(parent, name, path, home),
    )
    tree.forget_directories("/")
    tmp = tmp_path / "part"
    tmp.write_bytes(b"x")
    final = os.path.join(str(tmp_path), "sub", "f")
    assert tree.commit(str(tmp), final, "/") == final
    assert made[0] == "/" + str(tmp_path).split(os.sep)[1]
    assert open(final, "rb").read() == b"x"


def test_a_file_that_cannot_be_moved_aside_stays_where_it_was(tmp_path, monkeypatch):
    """``/a`` is on disk and ``/a/b`` comes: if ``a`` cannot become a directory (a full disk),
    ``/a/b`` fails as ``disk`` and the good copy of ``/a`` stays at ``a``."""
    home = tmp_path / "home"
    (home / "h").mkdir(parents=True)
    (home / "h" / "a").write_bytes(b"good copy")
    part = tmp_path / "part"
    part.write_bytes(b"b")
    real_mkdir = os.mkdir

    def full(path, *args, **kwargs):
        if str(path).endswith(os.path.join("h", "a")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", full)
    with pytest.raises(DownloadFailed) as failed:
        tree.commit(str(part), str(home / "h" / "a" / "b"), str(home))
    assert failed.value.kind == ErrorKind.DISK
    assert (home / "h" / "a").read_bytes() == b"good copy"
    assert [p.name for p in (home / ".shardload-tmp").iterdir()] == []
    tree.forget_directories(str(home))


def test_a_file_goes_to_the_directory_now_at_its_path_after_the_old_one_was_moved(tmp_path):
    """A walked directory renamed away and made anew: the next file lands in the new one,
    where its bundle says, not in the one moved away."""
    home = tmp_path / "home"
    home.mkdir()
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}"
        part.write_bytes(b"%d" % i)
        parts.append(str(part))
    tree.commit(parts[0], str(home / "h" / "dir" / "a"), str(home))
    os.rename(home / "h" / "dir", home / "h" / "dir.old")
    (home / "h" / "dir").mkdir()
    landed = tree.commit(parts[1], str(home / "h" / "dir" / "b"), str(home))
    assert landed == str(home / "h" / "dir" / "b") and open(landed, "rb").read() == b"1"
    assert sorted(os.listdir(home / "h" / "dir.old")) == ["a"]
    tree.forget_directories(str(home))


def test_a_file_another_process_already_moved_aside_is_left_alone(tmp_path):
    """Two processes (a split host's workers, two runs) saw the file ``a`` and both moved
    it aside: the second took the directory the first had just made and stored it as the
    file, leaving ``a/%file/b`` (and written bundles pointing at nothing). The moves take
    turns, and one that finds a directory already there moves nothing."""
    home = tmp_path / "home"
    (home / "h" / "a").mkdir(parents=True)
    (home / "h" / "a" / "%file").write_bytes(b"a")
    (home / "h" / "a" / "b").write_bytes(b"b")
    tree._displace(str(home / "h" / "a"), str(home))  # what the late process did
    assert sorted(os.listdir(home / "h" / "a")) == ["%file", "b"]
    assert (home / "h" / "a" / "%file").read_bytes() == b"a"
    assert [p.name for p in (home / ".shardload-tmp").iterdir()] == []


def test_moves_aside_take_turns_between_processes(tmp_path):
    """The lock is held on home's temporary folder, between processes: another process
    cannot take it while one holds it."""
    home = tmp_path / "home"
    home.mkdir()
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('taken')\n"
        "except BlockingIOError:\n"
        "    print('busy')\n"
    )

    def other_process() -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(home / ".shardload-tmp")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()

    with tree._home_locked(str(home)):
        assert other_process() == "busy"
    assert other_process() == "taken"


def _hold_lock(path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_lock_someone_else_holds_fails_the_move_instead_of_freezing_the_run(
    tmp_path, monkeypatch
):
    """The wait blocks the event loop: bounded, it fails that one file as ``disk`` with the
    reason, and the good copy stays where it was."""
    home = tmp_path / "home"
    (home / "h").mkdir(parents=True)
    (home / ".shardload-tmp").mkdir()
    (home / "h" / "a").write_bytes(b"good copy")
    part = tmp_path / "part"
    part.write_bytes(b"b")
    holder = _hold_lock(home / ".shardload-tmp")
    try:
        monkeypatch.setattr(tree, "_LOCK_WAIT", 0.2)
        with pytest.raises(DownloadFailed) as failed:
            tree.commit(str(part), str(home / "h" / "a" / "b"), str(home))
        assert failed.value.kind == ErrorKind.DISK and "locked" in failed.value.message
        assert (home / "h" / "a").read_bytes() == b"good copy"
    finally:
        _release(holder)
        tree.forget_directories(str(home))


def test_a_users_own_lock_on_home_stops_no_move(tmp_path, monkeypatch):
    """``flock out shardload ... -o out``, a cron guard, holds home for the whole run: every
    move aside waited out the bound, the event loop blocked, and failed as ``disk``."""
    home = tmp_path / "home"
    (home / "h").mkdir(parents=True)
    (home / "h" / "a").write_bytes(b"good copy")
    part = tmp_path / "part"
    part.write_bytes(b"b")
    holder = _hold_lock(home)
    try:
        monkeypatch.setattr(tree, "_LOCK_WAIT", 0.2)
        tree.commit(str(part), str(home / "h" / "a" / "b"), str(home))
        assert (home / "h" / "a" / "%file").read_bytes() == b"good copy"
        assert (home / "h" / "a" / "b").read_bytes() == b"b"
    finally:
        _release(holder)
        tree.forget_directories(str(home))


def test_a_lock_on_a_temporary_folder_no_longer_at_its_name_is_taken_again(tmp_path, monkeypatch):
    """A run that ends removes the empty folder and another makes it again: a lock on the
    old one would not keep the new one's holders out."""
    home = tmp_path / "home"
    (home / ".shardload-tmp").mkdir(parents=True)
    real_flock = tree.fcntl.flock
    swapped = []

    def flock_then_swap(fd, operation):
        real_flock(fd, operation)
        if not swapped:  # another run removes the folder and makes it again
            os.rmdir(home / ".shardload-tmp")
            os.mkdir(home / ".shardload-tmp")
            swapped.append(True)

    monkeypatch.setattr(tree.fcntl, "flock", flock_then_swap)
    fd = tree._lock_temp_dir(str(home))
    try:
        assert swapped and os.path.samestat(os.fstat(fd), os.lstat(home / ".shardload-tmp"))
    finally:
        os.close(fd)


def test_skip_cached_never_takes_a_file_outside_home_for_a_copy(srv, home, tmp_path):
    """A folder of home linked outside: writing there is refused, and skip_cached must not
    report the file it finds through the link as the cached download either."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "1").write_bytes(b"SECRET")
    (outside / "links").mkdir()
    (outside / "links" / "1").write_bytes(b"SECRET")
    host_dir = srv.base_urls[0].removeprefix("http://").replace(":", "_")
    os.symlink(outside, os.path.join(home, host_dir))
    download = shardload.AioDownload(
        download_strategy=DownloadStrategy(home=home, skip_cached=True)
    )
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=download)
    assert b.state == "failed" and b.error_kind == ErrorKind.UNSAFE_PATH, b


@pytest.mark.parametrize("swapped", ["h/dir", "h"])
def test_a_lookup_never_trusts_a_folder_swapped_for_a_symlink_after_an_earlier_lookup(
    tmp_path, swapped
):
    """Lookups remember folders found safe, by identity: one replaced by a symlink to a
    copy outside home since is not that folder any more."""
    home = tmp_path / "home"
    (home / "h" / "dir").mkdir(parents=True)
    (home / "h" / "dir" / "f").write_bytes(b"mine")
    target = str(home / "h" / "dir" / "f")
    assert tree.find_complete(target, str(home)) == (target, 4)
    outside = tmp_path / "outside"
    shutil.copytree(home / swapped, outside)
    shutil.rmtree(home / swapped)
    os.symlink(outside, home / swapped)
    assert tree.find_complete(target, str(home)) is None


@pytest.mark.parametrize("swapped", ["h/dir", "h"])
def test_a_directory_swapped_for_a_symlink_mid_run_never_leads_a_file_outside_home(
    tmp_path, swapped
):
    """Directories already walked are not walked again for the next file; one that someone
    replaced by a symlink since (the file's own folder, or one above it) is refused."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir()
    outside.mkdir()
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}"
        part.write_bytes(b"x")
        parts.append(str(part))
    first = tree.commit(parts[0], str(home / "h" / "dir" / "a"), str(home))
    assert open(first, "rb").read() == b"x"
    shutil.rmtree(home / swapped)
    (home / swapped).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, home / swapped)
    with pytest.raises(DownloadFailed) as failed:
        tree.commit(parts[1], str(home / "h" / "dir" / "b"), str(home))
    assert failed.value.kind == ErrorKind.UNSAFE_PATH
    assert list(outside.iterdir()) == []
    tree.forget_directories(str(home))


def test_a_temporary_folder_swapped_for_a_symlink_mid_run_takes_no_body_outside(
    srv, home, tmp_path
):
    """After the first file, ``.shardload-tmp`` moved aside and a symlink to a folder outside
    put in its place: later bodies were streamed out there, then renamed into home."""
    outside = tmp_path / "outside"
    outside.mkdir()
    download = make_download(home)
    urls = [f"{srv.base_urls[0]}/bytes/{2_000_000 + i}?swap" for i in range(2)]

    async def run() -> list[Bundle]:
        first = await download.main(Bundle(urls[0]))
        os.rename(os.path.join(home, ".shardload-tmp"), os.path.join(home, "moved"))
        os.symlink(outside, os.path.join(home, ".shardload-tmp"))
        second = await download.main(Bundle(urls[1]))
        await download.close()
        return [first, second]

    first, second = asyncio.run(run())
    assert first.ok
    assert (second.state, second.error_kind) == ("failed", ErrorKind.UNSAFE_PATH)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_leaves_only_the_downloads_in_home(srv, home, processes):
    """The temporary folder goes when the run ends, so home holds what was downloaded."""
    urls = [f"{base}/links/{i}" for base in srv.base_urls[:2] for i in range(3)]
    bundles = shardload.swarm(urls, download=make_download(home), processes=processes)
    assert all(b.ok for b in bundles)
    hosts = {os.path.relpath(b.file_path, home).split(os.sep)[0] for b in bundles}
    assert sorted(os.listdir(home)) == sorted(hosts) and len(hosts) == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_files_get_the_mode_the_umask_gives(srv, home, processes):
    """With umask 002 files were 0644 while the folders shardload made were 0775."""
    urls = [f"{base}/links/{i}?umask" for base in srv.base_urls[:2] for i in range(2)]
    before = os.umask(0o002)
    try:
        bundles = shardload.swarm(urls, download=make_download(home), processes=processes)
    finally:
        os.umask(before)
    assert all(b.ok for b in bundles)
    assert {stat.S_IMODE(os.stat(b.file_path).st_mode) for b in bundles} == {0o664}


def test_a_write_that_finds_the_temporary_folder_gone_makes_it_again(srv, home):
    """As when another engine's runs on the same home ended, and removed the then empty
    folder, after this one had made sure of it."""
    temps._made.setdefault(absolute(home), set()).add(temps.temp_dir(home))
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/2"], download=make_download(home))
    assert b.ok, b.error_message


def test_a_run_removes_temporary_files_of_processes_that_are_gone(srv, home):
    """A run killed whole (SIGKILL of the CLI, say) leaves its partial files; the next run on
    that home removes them, and never those of a process still running."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tmp = os.path.join(home, ".shardload-tmp")
    os.makedirs(tmp)
    stale = os.path.join(tmp, f"{temps.temp_prefix(gone.pid)}7.part")
    live = os.path.join(tmp, f"{temps.temp_prefix(os.getppid())}7.part")
    other = os.path.join(tmp, "not-ours.part")
    for path in (stale, live, other):
        with open(path, "wb") as f:
            f.write(b"partial")
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=make_download(home))
    assert b.ok
    assert not os.path.exists(stale) and os.path.exists(live) and os.path.exists(other)


def test_runs_sharing_a_home_never_lose_a_file_to_its_temporary_folder(srv, home):
    """A run's end removes the empty temporary folder while others are about to write in it
    (several threads, each its own runs on one home): they make it again, however often."""
    failures: list[str] = []

    def runs(tag: int) -> None:
        for i in range(25):
            (b,) = shardload.swarm(
                [f"{srv.base_urls[tag % 4]}/bytes/10?name=t{tag}-{i}"],
                download=make_download(home),
            )
            if not b.ok:
                failures.append(f"{b.error_kind}: {b.error_message}")

    threads = [threading.Thread(target=runs, args=(tag,)) for tag in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []


def _slow_thread_writes(monkeypatch) -> tuple[threading.Event, list[tuple[int, int | str]]]:
    """Batches written in a thread take 0.6 s more (a slow disk), so that a download's
    max_time of 0.3 s passes meanwhile. Returns an event set once such a batch is written, and
    for each batch its file's inode before the wait and its inode (or errno) after it."""
    real = files._write_and_hash
    done = threading.Event()
    seen: list[tuple[int, int | str]] = []

    def slow_in_thread(fd, chunks, digest):
        if sum(len(c) for c in chunks) < 1 << 20:
            return real(fd, chunks, digest)  # an inline write, on the loop
        before = os.fstat(fd).st_ino
        time.sleep(0.6)
        try:
            after: int | str = os.fstat(fd).st_ino
        except OSError as exc:
            after = errno.errorcode[exc.errno or 0]
        seen.append((before, after))
        try:
            return real(fd, chunks, digest)
        finally:
            done.set()

    monkeypatch.setattr(files, "_write_and_hash", slow_in_thread)
    return done, seen


def test_a_cancelled_download_keeps_its_file_open_while_its_thread_writes(srv, home, monkeypatch):
    """A batch written in a thread goes on when its download is cancelled (here by
    max_time). Its file was closed at once, so the thread's next write went to a closed
    descriptor, or to whatever file took its number (another download's, written as
    complete). Now the file stays open until the thread is done, then goes."""
    done, seen = _slow_thread_writes(monkeypatch)
    download = make_download(home, RequestStrategy(max_time=0.3))
    (b,) = shardload.swarm([srv.base_urls[0] + "/bytes/3000000"], download=download)
    assert (b.state, b.error_kind) == ("failed", ErrorKind.TIMEOUT), b.error_message
    assert done.wait(5)
    time.sleep(0.1)  # the file is closed and removed right after the thread's write
    assert len(seen) == 1 and seen[0][0] == seen[0][1]  # the same file, still open
    assert files_under(home) == set() and temp_files(home) == []


def test_a_cancelled_thread_write_closes_its_file_after_the_loop_is_gone(srv, home, monkeypatch):
    """aiodownload-era code drives the engine with run_until_complete and closes the loop
    without waiting for its threads: the cancelled download's batch, still being written,
    then closes and removes its file itself (the loop that would have done it is closed)."""
    done, _ = _slow_thread_writes(monkeypatch)
    download = make_download(home, RequestStrategy(max_time=0.3))
    loop = asyncio.new_event_loop()
    try:
        bundle = loop.run_until_complete(download.main(Bundle(srv.base_urls[0] + "/bytes/3000000")))
        loop.run_until_complete(download.close())
    finally:
        loop.close()  # the thread still writes: nobody waits for it
    assert (bundle.state, bundle.error_kind) == ("failed", ErrorKind.TIMEOUT)
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while temp_files(home) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert temp_files(home) == [] and files_under(home) == set()


def test_a_zombie_process_counts_as_gone():
    """A killed worker is a zombie until reaped, and signal 0 still reaches it: its
    temporary files were taken for a running process's, and a resume run kept them."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert not temps._running(child.pid)
    finally:
        child.wait()
    assert temps._running(os.getpid())


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENAMETOOLONG, ErrorKind.UNSAFE_PATH),  # a path the file system never takes
        (errno.ENOSPC, ErrorKind.DISK),  # a full disk: worth another run
        (errno.EACCES, ErrorKind.DISK),
    ],
)
def test_os_errors_of_a_write_map_to_their_kind(code, kind):
    from shardload.worker.failures import classify

    assert classify(OSError(code, os.strerror(code)))[0] == kind


def test_the_temp_folder_goes_once_a_write_a_closed_run_abandoned_ends(tmp_path):
    """A run closed while a thread still wrote a body left an empty .shardload-tmp: the run
    could not remove the folder yet, and the thread removed its file after."""
    from shardload.worker.temp_files import forget_temp_dir, open_temp, temp_dir

    home = str(tmp_path)
    temp = open_temp(home)
    release = threading.Event()
    run = temp.write_in_thread(lambda fd: release.wait(10))
    writer = threading.Thread(target=run)
    writer.start()
    temp.discard()  # the download is cancelled: the thread closes and removes the file
    forget_temp_dir(home)  # the run ends: its folder still holds that file
    assert os.path.isdir(temp_dir(home))
    release.set()
    writer.join(10)
    assert not os.path.exists(temp_dir(home))
