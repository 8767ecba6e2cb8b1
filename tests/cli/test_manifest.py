"""Manifest: resume decisions (tables), latest record wins, batched flushing, torn lines."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from shardload.cli.manifest import (
    Action,
    ManifestWriter,
    Prior,
    Priors,
    classify,
    decide,
    encode,
    iter_records,
    latest_priors,
    load_priors,
    looks_like_manifest,
)


def _rec(url: str = "http://a/x", **fields: Any) -> dict[str, Any]:
    return {"url": url, **fields}


def _known(read: tuple[Priors, int]) -> tuple[dict[str, Prior], int]:
    """A resume's table as a dict over the URLs these tests use (a table cannot list its URLs)."""
    priors, unreadable = read
    known = {url: prior for url in ("u1", "u2", "u3") if (prior := priors.get(url)) is not None}
    assert len(priors) == len(known)
    return known, unreadable


@pytest.mark.parametrize(
    ("record", "prior"),
    [
        (_rec(state="written", status=200), Prior.DONE),
        (_rec(state="cached", status=None), Prior.DONE),
        ({**_rec(state="written", status=200), "own_path": True}, Prior.DONE_AT_OWN_PATH),
        (
            {**_rec(state="failed", error_kind="http", status=503), "own_path": True},
            Prior.TRANSIENT,
        ),
        (_rec(state="pending"), None),
        (_rec(), None),
        (_rec(state="failed", error_kind="http", status=503), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="http", status=500), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="http", status=429), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="http", status=408), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="http", status=404), Prior.PERMANENT),
        (_rec(state="failed", error_kind="http", status=410), Prior.PERMANENT),
        (_rec(state="failed", error_kind="http", status=403), Prior.PERMANENT),
        (_rec(state="failed", error_kind="http", status=None), Prior.PERMANENT),
        (_rec(state="failed", error_kind="http", status="503"), Prior.PERMANENT),
        (_rec(state="failed", error_kind="timeout"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="connect"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="reset"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="dns"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="truncated"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="worker_crash"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="breaker_open"), Prior.TRANSIENT),
        (_rec(state="failed", error_kind="robots"), Prior.TRANSIENT),  # robots.txt unreachable
        (_rec(state="failed", error_kind="disk"), Prior.TRANSIENT),  # fixed on this machine
        (_rec(state="failed", error_kind="invalid_url"), Prior.PERMANENT),
        (_rec(state="failed", error_kind="unsupported_scheme"), Prior.PERMANENT),
        (_rec(state="failed", error_kind="bad_input"), Prior.PERMANENT),
        (_rec(state="failed", error_kind="too_large"), Prior.PERMANENT),
        (_rec(state="failed", error_kind="unsafe_path"), Prior.PERMANENT),
        (_rec(state="failed", error_kind=None), Prior.PERMANENT),
    ],
)
def test_classify(record: dict[str, Any], prior: Prior | None) -> None:
    assert classify(record) is prior


@pytest.mark.parametrize(
    ("prior", "transient_only", "action"),
    [
        (None, False, Action.RUN),
        (None, True, Action.RUN),
        (Prior.DONE, False, Action.SKIP_DONE),
        (Prior.DONE, True, Action.SKIP_DONE),
        (Prior.DONE_AT_OWN_PATH, False, Action.SKIP_DONE),
        (Prior.DONE_AT_OWN_PATH, True, Action.SKIP_DONE),
        (Prior.TRANSIENT, False, Action.RUN),
        (Prior.TRANSIENT, True, Action.RUN),
        (Prior.PERMANENT, False, Action.RUN),
        (Prior.PERMANENT, True, Action.SKIP_PERMANENT),
    ],
)
def test_decide(prior: Prior | None, transient_only: bool, action: Action) -> None:
    assert decide(prior, transient_only=transient_only) is action


def test_latest_record_wins_and_unreadable_lines_are_counted() -> None:
    lines = [
        encode(_rec("u1", state="failed", error_kind="http", status=503)),
        encode(_rec("u2", state="written")),
        b"\n",
        b"[1, 2]\n",
        b'{"no_url": 1}\n',
        encode(_rec("u1", state="written")),
        encode(_rec("u2", state="failed", error_kind="http", status=404)),
        b'{"url": "u3", "sta',  # a torn last line
    ]
    assert _known(latest_priors(iter_records(lines))) == (
        {"u1": Prior.DONE, "u2": Prior.PERMANENT},
        3,
    )


@pytest.mark.parametrize(
    "bad",
    [
        _rec(state="failed", error_kind="bad_input", status=None),
        _rec(state="failed", error_kind="unsafe_path", status=None, own_path=True),
    ],
    ids=["bad-input", "own-path-outside-home"],
)
def test_a_bad_line_naming_a_url_never_hides_that_urls_own_record(bad: dict[str, Any]) -> None:
    """Two input lines name one URL, the second unusable (an empty path, or a path of its own
    outside the output folder): its record, written before or after the first line's, does
    not decide what a resume does with the URL (it fetched a written URL again;
    --retry-transient skipped a real 503)."""
    lines = [
        encode(_rec("u1", state="written")),
        encode({**bad, "url": "u1"}),
        encode(_rec("u2", state="failed", error_kind="http", status=503)),
        encode({**bad, "url": "u2"}),
        encode({**bad, "url": "u3"}),  # only the bad line named it: permanent
    ]
    expected = {"u1": Prior.DONE, "u2": Prior.TRANSIENT, "u3": Prior.PERMANENT}
    assert _known(latest_priors(iter_records(lines))) == (expected, 0)
    first_bad = [lines[1], lines[0], lines[3], lines[2], lines[4]]
    assert _known(latest_priors(iter_records(first_bad))) == (expected, 0)
    # The URL's own default path outside home (a symlink planted there) is the URL's failure.
    own = encode(_rec("u1", state="failed", error_kind="unsafe_path"))
    assert _known(latest_priors(iter_records([*lines, own])))[0]["u1"] is Prior.PERMANENT


def test_load_priors_missing_file_is_empty(tmp_path: Path) -> None:
    assert _known(load_priors(tmp_path / "none.jsonl")) == ({}, 0)


@pytest.mark.parametrize(
    ("content", "read"),
    [
        (b"", ({}, 0)),
        (b'{"url": "u3", "sta', ({}, 1)),  # the first record, torn by a crash: a manifest
        (encode(_rec("u1", state="written")) + b"junk\n", ({"u1": Prior.DONE}, 1)),
        (b"http://h/1\n", None),  # a whole line that is no record: not a manifest
        (b"http://h/1", None),  # nor without its newline: it is no torn record either
        (b"http://h/1\nhttp://h/2", None),
        (b"# urls\nhttp://h/1\nhttp://h/2\n", None),
        (b'{"url": "http://h/1", "path": "a"}\n{"url": "http://h/2"}\n', None),  # JSON input
    ],
    ids=[
        "empty",
        "torn-first",
        "records-and-junk",
        "one-url",
        "one-url-no-newline",
        "two-urls",
        "url-list",
        "jsonl",
    ],
)
def test_resume_refuses_a_file_that_holds_no_record(
    tmp_path: Path, content: bytes, read: tuple[dict[str, Prior], int] | None
) -> None:
    """--resume appends to its manifest: a URL list given as --manifest by mistake would get
    records appended to it."""
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    if read is not None:
        assert _known(load_priors(path)) == read
    else:
        with pytest.raises(ValueError, match="is not a manifest"):
            load_priors(path)
    assert path.read_bytes() == content


def test_encode_is_one_json_line_and_survives_odd_info() -> None:
    line = encode(_rec("http://a/é", info={"set": {1}}, state="written"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["url"] == "http://a/é"
    assert obj["info"] == {"set": "{1}"}
    # a lone surrogate cannot be UTF-8: it is escaped, never a crash
    assert json.loads(encode(_rec("http://a/\udcff")))["url"].startswith("http://a/")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_writer_flushes_by_count_and_by_time(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.jsonl"
    clock = Clock()
    w = ManifestWriter(path, append=False, flush_every=3, flush_interval=0.5, clock=clock)
    w.add(_rec("u1"))
    w.add(_rec("u2"))
    assert path.read_bytes() == b""  # buffered
    w.add(_rec("u3"))
    assert [r["url"] for r in _lines(path)] == ["u1", "u2", "u3"]  # count reached
    w.add(_rec("u4"))
    clock.now = 0.4
    w.flush_if_due()
    assert len(_lines(path)) == 3
    clock.now = 0.6
    w.flush_if_due()
    assert len(_lines(path)) == 4  # interval reached
    w.close()
    w.close()  # idempotent
    assert w.written == 4


def test_writer_truncates_without_append_and_appends_with(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(encode(_rec("old")))
    with ManifestWriter(path, append=True) as w:
        w.add(_rec("new"))
    assert [r["url"] for r in _lines(path)] == ["old", "new"]
    with ManifestWriter(path, append=False) as w:
        w.add(_rec("fresh"))
    assert [r["url"] for r in _lines(path)] == ["fresh"]


@pytest.mark.parametrize("torn_at", [0, 7, 18])
@pytest.mark.parametrize("first", [10, 70_000])  # the torn line's start within a block, or not
def test_writer_append_cuts_a_torn_last_line(tmp_path: Path, first: int, torn_at: int) -> None:
    """What a crash tore stayed, a line no JSON reader takes (jq, pandas' read_json)."""
    path = tmp_path / "m.jsonl"
    whole = encode(_rec("u1", state="written", info="i" * first))
    path.write_bytes(whole + encode(_rec("u2", state="written"))[:torn_at])
    with ManifestWriter(path, append=True) as w:
        w.add(_rec("u2", state="written"))
    assert path.read_bytes() == whole + encode(_rec("u2", state="written"))
    assert _known(load_priors(path)) == ({"u1": Prior.DONE, "u2": Prior.DONE}, 0)


def test_writer_append_keeps_a_whole_record_its_newline_missing(tmp_path: Path) -> None:
    """The resume counted it as done: cut, its URL would have no record at all."""
    path = tmp_path / "m.jsonl"
    path.write_bytes(encode(_rec("u1", state="written"))[:-1])
    with ManifestWriter(path, append=True) as w:
        w.add(_rec("u2", state="written"))
    assert _known(load_priors(path)) == ({"u1": Prior.DONE, "u2": Prior.DONE}, 0)
    assert (w.written, w.unwritten) == (1, 0)  # the newline that ends u1 is no record


@pytest.mark.parametrize(("whole", "part"), [(0, 0), (0, 5), (1, 0), (1, 5), (2, 0), (2, 5)])
def test_a_write_the_disk_cuts_short_counts_only_the_whole_records(
    tmp_path: Path, whole: int, part: int
) -> None:
    """A full disk takes part of a batch: ``written`` counts the records the file holds
    whole, ``unwritten`` the rest (the CLI's summary reports them)."""
    lines = [encode(_rec(f"u{i}", state="written")) for i in range(3)]
    room = len(b"".join(lines[:whole])) + part
    path = tmp_path / "m.jsonl"
    w = ManifestWriter(path, append=False, flush_every=100)
    real = w._file

    class FullDisk:  # the kernel's answer to a write past the space left: a short write
        def __init__(self) -> None:
            self.left = room

        def write(self, data: memoryview) -> int:
            if not self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = real.write(data[: self.left])
            self.left -= n
            return n

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    w._file = FullDisk()  # type: ignore[assignment]
    for i in range(3):
        w.add(_rec(f"u{i}", state="written"))
    with pytest.raises(OSError, match="No space"):
        w.flush()
    assert path.read_bytes() == b"".join(lines)[:room]
    assert (w.written, w.unwritten) == (whole, 3 - whole)
    w._file = real
    w.close()


def test_a_torn_only_line_is_cut_to_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"url": "u1", "sta')
    with ManifestWriter(path, append=True) as w:
        w.add(_rec("u1", state="written"))
    assert path.read_bytes() == encode(_rec("u1", state="written"))


def test_a_writer_closed_before_any_record_can_leave_the_file_as_it_found_it(
    tmp_path: Path,
) -> None:
    """A usage error found as the run starts: the previous manifest stays, and a manifest that
    did not exist (also behind a dangling symlink, which must survive) is not created."""
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(encode(_rec("old")))
    for how in ({"keep_previous": True}, {"leave_no_trace": True}):
        ManifestWriter(kept, append=False).close(**how)
        assert [r["url"] for r in _lines(kept)] == ["old"]
    new = tmp_path / "new.jsonl"
    ManifestWriter(new, append=False).close(leave_no_trace=True)
    assert not new.exists()
    ManifestWriter(new, append=False).close(keep_previous=True)  # an interrupted first run
    assert new.read_bytes() == b""
    link = tmp_path / "link.jsonl"
    (tmp_path / "real").mkdir()
    link.symlink_to(tmp_path / "real" / "manifest.jsonl")
    ManifestWriter(link, append=False).close(leave_no_trace=True)
    assert link.is_symlink() and not link.exists()  # still dangling: nothing created
    with ManifestWriter(kept, append=False):  # without a usage error: emptied
        pass
    assert kept.read_bytes() == b""


def test_resume_refuses_a_manifest_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """Reading a FIFO (or `--manifest /dev/stdout | ...`, our own output) waits for ever."""
    fifo = tmp_path / "m.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        load_priors(fifo)


@pytest.mark.parametrize(
    ("text", "replaceable"),
    [
        (b"", True),
        (b"\n\n", True),
        (encode({"url": "u", "state": "written"}), True),
        # a first record a full disk cut short, then records appended by --resume
        (b'{"url":"u","sta\n' + encode({"url": "v", "state": "failed"}), True),
        (b"http://a/1\nhttp://a/2\n", False),
        (b"\nhttp://a/1\n", False),  # a URL list that starts with a blank line
        (b'{"url": "http://a/1", "path": "x"}\n', False),  # a JSONL input: no state
    ],
)
def test_which_files_a_new_manifest_may_replace(
    tmp_path: Path, text: bytes, replaceable: bool
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(text)
    assert looks_like_manifest(path) is replaceable


def test_a_manifest_on_a_file_system_without_locks_is_written_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS without lockd answers ENOLCK: the lock's first version made that a usage error."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path, append=False) as writer:
        writer.add({"url": "u", "state": "written"})
    assert [r["url"] for r in _lines(path)] == ["u"]
