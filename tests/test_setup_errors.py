"""Mistakes in the calling script become clear errors, not crash loops."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _run_script(path, code: str) -> subprocess.CompletedProcess[str]:
    """Write ``code`` to the script ``path`` and run it, as ``python script.py`` does."""
    path.write_text(textwrap.dedent(code))
    return _run_python(str(path))


def _swarm_two_hosts(server, indent: str) -> str:
    """Script lines (the first unindented, the others at ``indent``): the download ``d``
    asked to run two hosts' URLs over two processes, printing the ConfigurationError it
    raises as "CLEAR: ..."."""
    lines = [
        f'urls = ["{server.base_urls[0]}/links/1", "{server.base_urls[1]}/links/2"]',
        "try:",
        "    shardload.swarm(urls, download=d, processes=2)",
        "except shardload.ConfigurationError as exc:",
        '    print("CLEAR:", exc)',
    ]
    return ("\n" + indent).join(lines)


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path, server):
    out = _run_script(
        tmp_path / "unguarded.py",
        f"""
            import shardload
            from shardload import AioDownload, DownloadStrategy
            d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
            {_swarm_two_hosts(server, "            ")}
            """,
    )
    assert "CLEAR:" in out.stdout, out.stderr[-2000:]
    assert "__main__" in out.stdout


def _run_interactive(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as ``python -c`` does: a ``__main__`` with no file, as in a notebook."""
    return _run_python("-c", textwrap.dedent(code))


def test_a_strategy_defined_in_an_interactive_session_gets_a_clear_error(tmp_path, server):
    out = _run_interactive(
        f"""
        import shardload
        from shardload import AioDownload, DownloadStrategy

        class Mine(DownloadStrategy):
            pass

        d = AioDownload(download_strategy=Mine(home={str(tmp_path)!r}))
        {_swarm_two_hosts(server, "        ")}
        print("ONE PROCESS:", shardload.swarm(["{server.base_urls[0]}/links/1"], download=d)[0].ok)
        """
    )
    assert "CLEAR: Mine is defined in an interactive session" in out.stdout, out.stderr[-2000:]
    assert "processes=1" in out.stdout and "__name__" not in out.stdout
    assert "ONE PROCESS: True" in out.stdout


def test_a_bundle_subclass_from_an_interactive_session_arrives_as_a_plain_bundle(tmp_path, server):
    out = _run_interactive(
        f"""
        import shardload
        from shardload import AioDownload, Bundle, DownloadStrategy

        class Tagged(Bundle):
            pass

        d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
        urls = ["{server.base_urls[0]}/links/1", "{server.base_urls[1]}/links/2"]
        done = shardload.swarm([Tagged(u) for u in urls], download=d, processes=2)
        print("STATES:", [type(b).__name__ + ":" + b.state for b in done])
        """
    )
    assert "STATES: ['Tagged:written', 'Tagged:written']" in out.stdout, out.stderr[-2000:]


def test_a_strategy_defined_under_the_main_guard_gets_a_clear_error(tmp_path, server):
    """Workers import the script without running its ``if __name__ == "__main__":`` block, so
    a class defined there cannot reach them: said before any work, naming the class."""
    out = _run_script(
        tmp_path / "guarded.py",
        f"""
            import shardload
            from shardload import AioDownload, DownloadStrategy

            if __name__ == "__main__":
                class Local(DownloadStrategy):
                    pass

                d = AioDownload(download_strategy=Local(home={str(tmp_path)!r}))
                {_swarm_two_hosts(server, "                ")}
            """,
    )
    assert "CLEAR: Local is defined inside the main script's" in out.stdout, out.stderr[-2000:]
    assert "Traceback" not in out.stderr  # no worker died trying


def test_the_names_a_script_binds_when_imported(tmp_path):
    from shardload.executors.base import _top_level_names

    script = tmp_path / "s.py"
    script.write_text(
        textwrap.dedent(
            """
            import os.path as p, json
            from x import y as z
            class Top: pass
            def fn(): inner = 1
            try:
                class InTry: pass
            except ImportError:
                class InHandler: pass
            if p:
                class InIf: pass
            else:
                A = B = 1
            if __name__ == "__main__":
                class Guarded: pass
                hidden = 1
            else:
                class Imported: pass
            if "__main__" == __name__:
                class AlsoGuarded: pass
            match p:
                case _:
                    class InCase: pass
            def setup():
                global ByFunction
                class ByFunction: pass
            """
        )
    )
    names = _top_level_names(str(script))
    assert names is not None
    bound = ("p", "json", "z", "Top", "fn", "InTry", "InHandler", "InIf", "A", "B", "Imported")
    for name in (*bound, "InCase", "ByFunction"):
        assert name in names, name
    assert not names & {"Guarded", "hidden", "AlsoGuarded"}
    assert _top_level_names(str(tmp_path / "missing.py")) is None


def test_an_info_class_defined_under_the_main_guard_does_not_hang_the_run(tmp_path, server):
    """A worker cannot import a class the script defines under its main guard: it died on
    the whole batch's unpickling, its reader gone, and the run waited for ever. The info
    stays in the caller (as an unpicklable one does) and every item is downloaded."""
    out = _run_script(
        tmp_path / "guarded_info.py",
        f"""
            import shardload
            from shardload import AioDownload, DownloadStrategy

            if __name__ == "__main__":
                class Rec:
                    def __init__(self, url):
                        self.url = url

                d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
                hosts = {server.base_urls[:2]!r}
                recs = [Rec(f"{{hosts[i % 2]}}/links/{{i}}") for i in range(6)]
                bundles = shardload.swarm(recs, url_map=lambda r: r.url, download=d, processes=2)
                print("STATES", sorted({{b.state for b in bundles}}))
                print("INFO", all(b.info is r for b, r in zip(bundles, recs)))
            """,
    )
    assert "STATES ['written']" in out.stdout, out.stderr[-2000:]
    assert "INFO True" in out.stdout


def test_classes_from_a_module_a_worker_cannot_import_do_not_fail_the_run(tmp_path, server):
    """A plugin loaded from a file the import path does not reach: its info objects and
    bundle subclass failed every item as worker_crash, two dead workers per item, with a
    "cannot load jobs" line each on stderr. The info stays in the caller, the bundle goes as
    a plain one, and each URL is downloaded."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "records.py").write_text(
        textwrap.dedent(
            """
            import shardload

            class Record:
                def __init__(self, url):
                    self.url = url

            class Tagged(shardload.Bundle):
                pass
            """
        )
    )
    out = _run_script(
        tmp_path / "plugged.py",
        f"""
            import importlib.util, sys
            import shardload
            from shardload import AioDownload, DownloadStrategy

            def load_plugin():
                spec = importlib.util.spec_from_file_location(
                    "records", {str(plugins / "records.py")!r}
                )
                module = importlib.util.module_from_spec(spec)
                sys.modules["records"] = module
                spec.loader.exec_module(module)
                return module

            if __name__ == "__main__":
                records = load_plugin()
                d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
                hosts = {server.base_urls[:2]!r}
                recs = [records.Record(f"{{hosts[i % 2]}}/links/{{i}}") for i in range(8)]
                got = shardload.swarm(recs, url_map=lambda r: r.url, download=d, processes=2)
                print("INFO", sorted({{b.state for b in got}}), all(
                    b.info is r for b, r in zip(got, recs)))
                tagged = [records.Tagged(f"{{hosts[i % 2]}}/links/{{100 + i}}") for i in range(8)]
                got = shardload.swarm(tagged, download=d, processes=2)
                print("TAGGED", sorted({{type(b).__name__ + ":" + b.state for b in got}}))
            """,
    )
    assert "INFO ['written'] True" in out.stdout, out.stderr[-2000:]
    assert "TAGGED ['Tagged:written']" in out.stdout, out.stderr[-2000:]
    assert "cannot load" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_strategy_from_a_module_a_worker_cannot_import_gets_a_clear_error(tmp_path, server):
    """The worker died at start, and the error blamed a missing main guard the script had."""
    plugin = tmp_path / "plugins" / "strategies.py"
    plugin.parent.mkdir()
    plugin.write_text("import shardload\n\nclass Plugged(shardload.DownloadStrategy):\n    pass\n")
    out = _run_script(
        tmp_path / "plugged_strategy.py",
        f"""
            import importlib.util, sys
            import shardload
            from shardload import AioDownload

            if __name__ == "__main__":
                spec = importlib.util.spec_from_file_location("strategies", {str(plugin)!r})
                module = importlib.util.module_from_spec(spec)
                sys.modules["strategies"] = module
                spec.loader.exec_module(module)
                d = AioDownload(download_strategy=module.Plugged(home={str(tmp_path)!r}))
                {_swarm_two_hosts(server, "                ")}
                print("ONE PROCESS:", shardload.swarm(urls, download=d)[0].ok)
            """,
    )
    assert "CLEAR: Plugged comes from a module worker processes cannot import" in out.stdout, (
        out.stdout + out.stderr[-2000:]
    )
    assert "Traceback" not in out.stderr and "ONE PROCESS: True" in out.stdout


def test_a_script_class_is_sendable_from_a_process_multiprocessing_started(tmp_path, server):
    """There the script is ``__mp_main__``: its classes were taken for a module no worker
    can import, and swarm(processes=2) refused them (a regression of this check)."""
    out = _run_script(
        tmp_path / "pooled.py",
        f"""
            import concurrent.futures, multiprocessing
            import shardload
            from shardload import AioDownload, DownloadStrategy

            class Mine(DownloadStrategy):
                pass

            def job():
                d = AioDownload(download_strategy=Mine(home={str(tmp_path)!r}))
                urls = ["{server.base_urls[0]}/links/1", "{server.base_urls[1]}/links/2"]
                return [b.state for b in shardload.swarm(urls, download=d, processes=2)]

            if __name__ == "__main__":
                context = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                    print("STATES", pool.submit(job).result(timeout=90))
            """,
    )
    assert "STATES ['written', 'written']" in out.stdout, out.stdout + out.stderr[-2000:]


def test_a_script_read_from_standard_input_gets_a_clear_error(tmp_path, server):
    """``python - < job.py``: each spawned worker failed to run ``<stdin>`` again, printing a
    traceback, and the error told the user to add the main guard the script had."""
    code = f"""
        import shardload
        from shardload import AioDownload, DownloadStrategy

        if __name__ == "__main__":
            d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
            {_swarm_two_hosts(server, "            ")}
            print("ONE PROCESS:", shardload.swarm(urls, download=d)[0].ok)
        """
    out = subprocess.run(
        [sys.executable, "-"],
        input=textwrap.dedent(code),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "CLEAR: the main script (<stdin>)" in out.stdout, out.stderr[-2000:]
    assert "processes=1" in out.stdout and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "ONE PROCESS: True" in out.stdout


def test_a_daemonic_process_gets_a_clear_error(tmp_path, server):
    """Inside a ``multiprocessing.Pool`` worker (a daemon), starting workers raised
    multiprocessing's bare AssertionError out of swarm()."""
    out = _run_script(
        tmp_path / "pooled.py",
        f"""
            import multiprocessing
            import shardload
            from shardload import AioDownload, DownloadStrategy

            def job(processes):
                d = AioDownload(download_strategy=DownloadStrategy(home={str(tmp_path)!r}))
                urls = ["{server.base_urls[0]}/links/1", "{server.base_urls[1]}/links/2"]
                try:
                    return [b.ok for b in shardload.swarm(urls, download=d, processes=processes)]
                except shardload.ConfigurationError as exc:
                    return f"CLEAR: {{exc}}"

            if __name__ == "__main__":
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    print(pool.map(job, [2, 1]))
            """,
    )
    assert "CLEAR: worker processes cannot be started from a daemonic process" in out.stdout, (
        out.stdout + out.stderr[-2000:]
    )
    assert "[True, True]" in out.stdout
