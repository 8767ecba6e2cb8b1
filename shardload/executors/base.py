"""The executor interface the coordinator drives.

Contract: ``send`` never blocks the coordinator's loop; every sink callback runs in the
coordinator's loop thread; after ``crashed(shard)`` the coordinator owns every job it had sent to
that shard and not yet seen a result for (it may ``restart`` the shard and send them again);
``finish`` is called only when no job is outstanding; ``abort`` stops everything promptly and
leaves no process behind, and the results of jobs that finished before it reach the sink
before it returns.
"""

from __future__ import annotations

import ast
import functools
import pickle
import sys
from collections.abc import Callable
from typing import Any, Protocol

from ..bundle import Job, Result

# How long a worker (process or actor) may take to report ready before its start counts as
# failed; a restart that never ends would otherwise keep its shard's jobs pending forever.
START_SECONDS = 120.0


class ExecutorSink(Protocol):
    def results(self, shard: int, results: list[Result]) -> None: ...

    def crashed(self, shard: int, reason: str) -> None: ...


class Executor(Protocol):
    shards: int
    # True when jobs are pickled to another process: then ``info`` travels only if it pickles.
    crosses_processes: bool
    # True when that process loads the caller's classes by importing its main module (spawn,
    # forkserver), so one the script defines only under its main guard cannot arrive. Ray
    # pickles such classes by value.
    imports_main: bool

    async def start(self, sink: ExecutorSink) -> None: ...

    def send(self, shard: int, jobs: list[Job]) -> None: ...

    async def restart(self, shard: int) -> None: ...

    async def finish(self) -> None: ...

    async def abort(self) -> None: ...

    def received(self) -> int | None:
        """Bytes of bodies its workers received so far, downloads in progress included
        (``worker.meter``); None when it cannot be read while the run goes on."""
        ...


def interactive_names(value: object) -> list[str]:
    """The classes and functions in ``value`` (as pickled) that live in an interactive
    ``__main__``.

    A spawned worker imports the caller's main module to unpickle what was defined there; a
    notebook's or a REPL's has no file to import, so the worker would die at start with an
    advice that does not apply. A script's ``__main__`` has a file: nothing to check.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None):
        return []
    return _main_names(value)


def names_hidden_in_main(value: object) -> list[str]:
    """The classes and functions in ``value`` that a script's ``__main__`` defines only inside
    a block a worker does not run when it imports the script (``if __name__ ==
    '__main__':``): the worker would die at start, with an advice that does not apply."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return []
    found = _main_names(value)
    if not found:
        return []
    defined = _top_level_names(str(path))
    if defined is None:
        return []  # the script cannot be read: nothing to say for sure
    return [name for name in found if name.split(".", 1)[0] not in defined]


def unimportable_names(value: object) -> list[str]:
    """The classes and functions in ``value`` (as pickled) from a module other than
    ``__main__`` that a fresh interpreter cannot import by its name: one loaded from a file
    the import path does not reach (a plugin loader's ``spec_from_file_location``), or made
    in memory. A spawned worker would die at start on it, with an advice that does not apply.
    Each module is looked up as a new import would, by the finders of ``sys.meta_path``."""
    return _global_names(value, lambda module: module not in _MAINS and not _importable(module))


# The running script's module: ``__mp_main__`` in a process multiprocessing started, whose
# own workers load it from the script's path as well.
_MAINS = frozenset({"__main__", "__mp_main__"})


def _importable(module: str) -> bool:
    top = module.split(".", 1)[0]
    if top in sys.builtin_module_names:
        return True
    return any(_finds(finder, top) for finder in sys.meta_path)


def _finds(finder: object, name: str) -> bool:
    find_spec = getattr(finder, "find_spec", None)
    try:
        return find_spec is not None and find_spec(name, None) is not None
    except Exception:  # a finder of someone else's that cannot answer: the next may
        return False


def _main_names(value: object) -> list[str]:
    return _global_names(value, lambda module: module == "__main__")


def _global_names(value: object, wanted: Callable[[str], bool]) -> list[str]:
    """The classes and functions ``value`` pickles by name whose module is ``wanted``."""
    found: list[str] = []
    asked: dict[str, bool] = {}

    class Finder(pickle._Pickler):  # the Python pickler: its save_global can be watched
        def save_global(self, obj: Any, name: str | None = None) -> None:
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                if module not in asked:
                    asked[module] = wanted(module)
                if asked[module]:
                    found.append(str(name or getattr(obj, "__qualname__", obj)))
            super().save_global(obj, name)  # type: ignore[misc]

    Finder(_Discard(), pickle.HIGHEST_PROTOCOL).dump(value)
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=8)
def _top_level_names(path: str) -> frozenset[str] | None:
    """The names a script binds when it is imported, not run: its top level, including
    blocks under ``if``/``try``/``with`` but not under ``if __name__ == "__main__":``."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_main_guard(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".", 1)[0] for a in node.names)
            else:
                names.update(
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                )
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([s for s in getattr(node, field, []) if isinstance(s, ast.stmt)])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                for case in getattr(node, "cases", []):  # match statements
                    visit(case.body)

    visit(tree.body)
    # A function run at import may bind module names (``global S``); without running the
    # script there is no telling, so such names count as bound: no false alarm.
    names.update(n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names)
    return frozenset(names)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False
    sides = (test.left, test.comparators[0])
    return any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) and any(
        isinstance(x, ast.Constant) and x.value == "__main__" for x in sides
    )


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


# What a worker rebuilds its engine from, as an error message names it.
THE_DOWNLOAD = "the download (its strategies, and an AioDownload subclass's own attributes)"
