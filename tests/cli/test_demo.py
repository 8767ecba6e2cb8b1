"""The demo: its input mix, and a small run of it end to end (``make demo`` runs 3000 URLs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardload.cli.demo import demo_lines, run_demo
from shardload.cli.inputs import BadLine, InputItem, parse_line

from .conftest import latest, read_manifest


def test_demo_lines_mix() -> None:
    lines = demo_lines(["http://127.0.0.2:1", "http://127.0.0.3:2"], count=1000)
    assert demo_lines(["http://127.0.0.2:1", "http://127.0.0.3:2"], count=1000) == lines
    parsed = [parse_line(line, i) for i, line in enumerate(lines, 1)]
    items = [p for p in parsed if isinstance(p, InputItem)]
    assert sum(isinstance(p, BadLine) for p in parsed) == 2
    assert len(items) == 1001  # 1000 URLs and one unsupported scheme
    for kind in ("/bytes/", "/status/404", "/status/500", "/flaky/", "/slow/"):
        assert any(kind in item.url for item in items), kind
    assert any(item.path for item in items)


def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-out"
    assert run_demo(out=out, count=120) == 0
    final = latest(read_manifest(out / "manifest.jsonl"))
    assert len(final) == 123  # 120 URLs, 1 unsupported scheme, 2 bad lines (keyed by text)
    states = {r["url"]: r["state"] for r in final.values()}
    flaky = [u for u in states if "/flaky/" in u]
    assert flaky and all(states[u] == "written" for u in flaky)  # fixed by --retry-transient
    assert all(states[u] == "failed" for u in states if "/status/" in u)
    printed = capsys.readouterr()
    assert "manifest in" in printed.out
    assert "skipped" in printed.err
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["url"]
