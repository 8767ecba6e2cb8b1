"""Input parsing: URL lines, JSON lines, comments, bad lines, gzip, stdin, long lines."""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shardload.cli import inputs
from shardload.cli.inputs import (
    BadLine,
    InputItem,
    is_countable,
    iter_parsed,
    open_input,
    parse_line,
)
from shardload.cli.manifest import encode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("   \n", None),
        ("# a comment", None),
        ("   # indented comment", None),
        ("http://a/x\n", InputItem(1, "http://a/x")),
        ("  http://a/x  \r\n", InputItem(1, "http://a/x")),
        ("not a url", InputItem(1, "not a url")),  # the library reports invalid_url
        ('{"url": "http://a/x"}', InputItem(1, "http://a/x")),
        ('{"url": " http://a/x "}', InputItem(1, "http://a/x")),
        ('{"url": "http://a/x", "path": "d/f.bin"}', InputItem(1, "http://a/x", "d/f.bin")),
        ('{"url": "http://a/x", "path": null}', InputItem(1, "http://a/x")),
        ('{"url": "http://a/x", "info": {"id": 7}}', InputItem(1, "http://a/x", None, {"id": 7})),
        ('{"url": "http://a/x", "extra": 1}', InputItem(1, "http://a/x")),
    ],
)
def test_parse_line_good(text: str, expected: InputItem | None) -> None:
    assert parse_line(text, 1) == expected


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("{not json", "{not json", "invalid JSON"),
        ('{"url": "http://a/x"', '{"url": "http://a/x"', "invalid JSON"),
        ('{"path": "p"}', '{"path": "p"}', "missing 'url'"),
        ('{"url": 5}', '{"url": 5}', "non-empty string"),
        ('{"url": ""}', '{"url": ""}', "non-empty string"),
        ('{"url": "http://a/x", "path": 3}', "http://a/x", "'path' must be"),
        ('{"url": "http://a/x", "path": ""}', "http://a/x", "'path' must be"),
        # Python's json reads these; a manifest line holding them is JSON to no one else.
        (
            '{"url": "http://a/x", "info": {"s": NaN}}',
            '{"url": "http://a/x", "info": {"s": NaN}}',
            "NaN is not a JSON value",
        ),
        (
            '{"url": "http://a/x", "info": -Infinity}',
            '{"url": "http://a/x", "info": -Infinity}',
            "-Infinity is not",
        ),
        (
            '{"url": "http://a/x", "info": [-1e999]}',
            '{"url": "http://a/x", "info": [-1e999]}',
            "-1e999 is too large",
        ),
    ],
)
def test_parse_line_bad(text: str, key: str, reason: str) -> None:
    parsed = parse_line(text, 3)
    assert isinstance(parsed, BadLine)
    assert parsed.key == key
    assert parsed.lineno == 3
    assert reason in parsed.reason
    assert parsed.reason.startswith("line 3: ")


def test_bad_line_keeps_info_and_truncates_key() -> None:
    parsed = parse_line('{"info": {"a": 1}, "url": null}', 1)
    assert isinstance(parsed, BadLine)
    assert parsed.info == {"a": 1}
    long = parse_line("{" + "x" * 5000, 1)
    assert isinstance(long, BadLine)
    assert len(long.key) == inputs.KEY_CHARS


def _nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


@pytest.mark.parametrize("url", ['"http://h/x"', "null"])
def test_an_info_nested_too_deep_is_a_bad_line_that_carries_none_of_it(url: str) -> None:
    """The manifest writes info back out deeper in the stack than the parser read it: an info
    ~1,000 deep was parsed, then stopped the whole run at its record (RecursionError)."""
    deepest = inputs.MAX_INFO_DEPTH
    kept = parse_line(f'{{"url": {url}, "info": {_nested(deepest)}}}', 1)
    assert kept is not None and kept.info is not None
    assert encode({"url": "u", "info": kept.info})  # what the manifest then does with it
    for depth in (deepest + 1, 3 * deepest):
        text = f'{{"url": {url}, "info": {_nested(depth)}}}'
        parsed = parse_line(text, 7)
        assert isinstance(parsed, BadLine)
        assert parsed.reason == f"line 7: 'info' nested over {deepest} deep"
        assert parsed.info is None
        assert parsed.key == ("http://h/x" if url != "null" else text[: inputs.KEY_CHARS])


def test_json_array_is_bad() -> None:
    # A line starting with "{" or "[" is JSON (no URL starts with either); anything else a URL.
    for text in ("[1]", '{"a": [1', "[oops"):
        assert isinstance(parse_line(text, 1), BadLine)


def _parsed(data: bytes) -> list[InputItem | BadLine]:
    return list(iter_parsed(io.BytesIO(data)))


def test_iter_parsed_numbers_lines_and_skips_blanks() -> None:
    data = b"\xef\xbb\xbfhttp://a/1\n\n# c\nhttp://a/2\r\n{bad\nhttp://a/3"
    got = _parsed(data)
    assert [type(p).__name__ for p in got] == ["InputItem", "InputItem", "BadLine", "InputItem"]
    assert [p.lineno for p in got] == [1, 4, 5, 6]
    assert got[0] == InputItem(1, "http://a/1")
    assert got[3] == InputItem(6, "http://a/3")


def test_iter_parsed_bad_utf8_is_a_bad_line() -> None:
    got = _parsed(b"http://a/\xff\xfe\nhttp://a/ok\n")
    assert isinstance(got[0], BadLine)
    assert "not UTF-8" in got[0].reason
    assert got[1] == InputItem(2, "http://a/ok")


def test_iter_parsed_overlong_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 16)
    got = _parsed(b"http://a/1\n" + b"x" * 100 + b"\nhttp://a/2\n")
    assert got[0] == InputItem(1, "http://a/1")
    assert isinstance(got[1], BadLine)
    assert "too long" in got[1].reason
    assert got[2] == InputItem(3, "http://a/2")


def test_truncated_gzip_becomes_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(b"http://a/%d\n" % i for i in range(2000)))
    with open_input("-", io.BytesIO(whole[: len(whole) // 2])) as stream:
        got = list(iter_parsed(stream))
    assert isinstance(got[-1], BadLine)
    assert "input read error" in got[-1].reason
    assert all(isinstance(p, InputItem) for p in got[:-1])


def test_corrupt_gzip_becomes_a_bad_line_not_a_crash() -> None:
    """A flipped byte that zlib itself refuses (zlib.error, not an OSError) aborted the CLI
    with a traceback; with -p 2, in counting hosts, before anything was downloaded."""
    whole = gzip.compress(b"".join(b"http://a/%d\n" % i for i in range(2000)))
    for offset in range(1000, len(whole) - 20, 7):
        corrupt = bytearray(whole)
        corrupt[offset] ^= 0xFF
        try:
            gzip.decompress(bytes(corrupt))
        except zlib.error:
            break
        except (OSError, EOFError):
            continue
    else:
        pytest.fail("no flip of a byte made zlib fail")
    with open_input("-", io.BytesIO(bytes(corrupt))) as stream:
        got = list(iter_parsed(stream))
    assert isinstance(got[-1], BadLine)
    assert "input read error" in got[-1].reason
    assert len(got) - 1 < 2000  # what came before the damage, if a read got that far
    assert all(isinstance(p, InputItem) for p in got[:-1])


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_open_input_detects_gzip_by_magic(tmp_path: Path, compress: bool, suffix: str) -> None:
    text = b"http://a/1\nhttp://a/2\n"
    path = tmp_path / f"urls{suffix}"
    path.write_bytes(gzip.compress(text) if compress else text)
    with open_input(str(path)) as stream:
        assert [p.url for p in iter_parsed(stream) if isinstance(p, InputItem)] == [
            "http://a/1",
            "http://a/2",
        ]
    assert inputs.count_items(str(path)) == 2


class _Trickle(io.RawIOBase):
    """A pipe that returns one byte per read, like a slow stdin."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        if not self._data:
            return 0
        view = memoryview(buffer)  # type: ignore[arg-type]
        view[0] = self._data[0]
        self._data = self._data[1:]
        return 1


@pytest.mark.parametrize("compress", [False, True])
def test_open_input_stdin_one_byte_at_a_time(compress: bool) -> None:
    text = b'http://a/1\n# c\n{"url": "http://a/2"}\n'
    data = gzip.compress(text) if compress else text
    with open_input("-", _Trickle(data)) as stream:  # type: ignore[arg-type]
        got = list(iter_parsed(stream))
    assert got == [InputItem(1, "http://a/1"), InputItem(3, "http://a/2")]


def test_open_input_empty_and_missing(tmp_path: Path) -> None:
    with open_input("-", io.BytesIO(b"")) as stream:
        assert list(iter_parsed(stream)) == []
    with pytest.raises(FileNotFoundError), open_input(f"{tmp_path}/nope.txt"):
        pass


def test_iter_parsed_is_lazy() -> None:
    def endless() -> object:
        i = 0
        while True:
            yield b"http://a/%d\n" % i
            i += 1

    class Endless(io.RawIOBase):
        def __init__(self) -> None:
            self._it = endless()
            self._buf = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            if not self._buf:
                self._buf = next(self._it)  # type: ignore[call-overload]
            view = memoryview(buffer)  # type: ignore[arg-type]
            n = min(len(view), len(self._buf))
            view[:n] = self._buf[:n]
            self._buf = self._buf[n:]
            return n

    with open_input("-", Endless()) as stream:  # type: ignore[arg-type]
        it = iter_parsed(stream)
        first = [next(it) for _ in range(3)]
    assert [p.lineno for p in first] == [1, 2, 3]


@pytest.mark.parametrize(
    ("path", "bad"),
    [("manifest.jsonl", True), ("./manifest.jsonl", True), ("a/../manifest.jsonl", True),
     ("manifest.jsonl/x", True), ("manifest.hosts.json", True), ("manifest.hosts.json/a/b", True),
     ("manifest.jsonl.bak", False), ("sub/manifest.jsonl", False), ("manifest", False)],
)  # fmt: skip
def test_explicit_path_onto_or_below_the_runs_own_files_is_a_bad_line(path: str, bad: bool) -> None:
    line = json.dumps({"url": "http://a/x", "path": path, "info": 7}).encode()
    reserved = ["manifest.jsonl", "manifest.hosts.json"]
    (got,) = list(iter_parsed(io.BytesIO(line), reserved=reserved))
    assert isinstance(got, BadLine) is bad
    if isinstance(got, BadLine):
        assert "would overwrite manifest." in got.reason and got.info == 7


def test_an_explicit_path_is_compared_as_the_download_would_resolve_it(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    paths = {
        str(tmp_path / "manifest.jsonl"): True,
        f"../{tmp_path.name}/manifest.jsonl": True,
        "sub/../manifest.jsonl": True,
        "link/manifest.jsonl": True,
        "link/sub/manifest.jsonl": False,
        str(tmp_path / "manifest.jsonl" / "x"): True,
        "/elsewhere/manifest.jsonl": False,
        "a\x00b": False,  # the download refuses it itself
    }
    for path, bad in paths.items():
        line = json.dumps({"url": "http://a/x", "path": path}).encode()
        (got,) = list(iter_parsed(io.BytesIO(line), ["manifest.jsonl"], str(tmp_path)))
        assert isinstance(got, BadLine) is bad, path


@pytest.mark.parametrize(
    ("url", "reserved", "bad"),
    [("http://127.0.0.1:8080/ok", "127.0.0.1_8080", True),
     ("http://127.0.0.1:8081/ok", "127.0.0.1_8080", False),
     ("http://127.0.0.1/ok", "127.0.0.1_8080", False),
     ("http://Manifest.JSONL/x", "manifest.jsonl", True),
     ("http://a/manifest.jsonl", "manifest.jsonl", False),
     ("http://127.0.0.1:8080/ok", "../127.0.0.1_8080", False),
     ("http://\uff11\uff12\uff17.0.0.1:8080/b", "127.0.0.1_8080", True),  # full-width digits
     ("http://\uff4danifest.jsonl/c", "manifest.jsonl", True)],
)  # fmt: skip
def test_a_default_path_below_a_top_level_file_of_the_run_is_a_bad_line(
    url: str, reserved: str, bad: bool
) -> None:
    """``--manifest out/127.0.0.1_8080``: the host's first file moved the manifest aside into
    ``127.0.0.1_8080/%file`` and the run said it succeeded (only a manifest in a sub-folder
    was looked for)."""
    (got,) = list(iter_parsed(io.BytesIO(url.encode()), reserved=[reserved]))
    assert isinstance(got, BadLine) is bad, got


def test_count_items_only_counts_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert inputs.count_items(str(fifo)) is None  # never reads (and so never steals) a pipe
    assert inputs.count_items(str(tmp_path / "missing")) is None


_TRICKY = st.sampled_from([" ", "\t", "\x0b", "\x0c", "\xa0", "\x1c", "\u2003", "\ufeff", "#", "{"])


@given(st.text(alphabet=_TRICKY | st.characters(blacklist_categories=("Cs",)), max_size=12))
@example("\xa0")
@example(" \x1c\t")
def test_a_line_counts_for_progress_exactly_when_it_gives_a_record(text: str) -> None:
    line = text.replace("\n", "").replace("\r", "")
    assert is_countable(line.encode()) == (parse_line(line, 1) is not None)


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf# exported\nhttp://a/1\nhttp://a/2\n",
        b"\xef\xbb\xbf\nhttp://a/1\n",
        b"\xef\xbb\xbfhttp://a/1\n# \xef\xbb\xbf only the first line's mark is one\n",
        b'\xef\xbb\xbf{"url": "http://a/1"}\n',
    ],
)
def test_the_progress_total_counts_what_a_byte_order_mark_hides(
    tmp_path: Path, data: bytes
) -> None:
    source = tmp_path / "urls.txt"
    source.write_bytes(data)
    parsed = _parsed(data)
    assert all(isinstance(p, InputItem) for p in parsed)
    assert inputs.count_items(str(source)) == len(parsed)


def test_a_line_of_unicode_whitespace_gets_a_record() -> None:
    for line in ("\xa0", "\x1c", "\u2003"):
        item = parse_line(line, 1)
        assert isinstance(item, InputItem) and item.url == line


def test_count_hosts_reads_only_small_regular_files(tmp_path: Path) -> None:
    lines = 'http://a/1\nhttp://A/2\nhttp://b:8080/x\n{"url": "http://c/y"}\nnope\n# c\n'
    plain = tmp_path / "u.txt"
    plain.write_text(lines)
    packed = tmp_path / "u.txt.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    assert inputs.count_hosts(str(plain)) == 3
    assert inputs.count_hosts(str(packed)) == 3
    assert inputs.count_hosts(str(plain), up_to_bytes=10) is None
    assert inputs.count_hosts(str(plain), up_to_items=2) is None
    assert inputs.count_hosts(str(tmp_path / "missing")) is None
    assert inputs.count_hosts(str(tmp_path)) is None
