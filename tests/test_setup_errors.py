"""Mistakes in the calling script become clear errors, not crash loops."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path, server):
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import shardload
            from shardload import AioDownload, DownloadStrategy
            d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
            urls = ["{server.base_urls[0]}/links/1", "{server.base_urls[1]}/links/2"]
            try:
                shardload.swarm(urls, download=d, processes=2)
            except shardload.ConfigurationError as exc:
                print("CLEAR:", exc)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "CLEAR:" in out.stdout, out.stderr[-2000:]
    assert "__main__" in out.stdout
