"""The bundle: one input item and everything a user needs to act on its result.

A bundle is a plain, picklable dataclass. It stays in the calling process; workers receive a
``Job`` (plain tuple data) and send back a ``Result``, which the coordinator copies onto the
caller's bundle, so ``bundle.info`` is always the caller's own object, never a copy.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ErrorKind

PENDING = "pending"
WRITTEN = "written"
CACHED = "cached"
FAILED = "failed"
SKIPPED = "skipped"  # not requested on purpose (robots.txt); error_kind says why

_KINDS = frozenset(kind.value for kind in ErrorKind)

# aiodownload's status words: kept for status_msg, and read where its request_and_download
# overrides set ``bundle._status_msg`` instead of a state (written, to be tried again, or
# given up after calling on_fail themselves).
SAID_WRITTEN, SAID_TRY_AGAIN, SAID_GAVE_UP = "File written", "Download attempted", "Download failed"
SAID_CACHED = "Cache hit"
_STATUS_WORDS = {
    PENDING: "Initialized",
    WRITTEN: SAID_WRITTEN,
    CACHED: SAID_CACHED,
    FAILED: SAID_GAVE_UP,
    SKIPPED: "Skipped",
}


def said_by_override(bundle: Bundle) -> str | None:
    """The status word an aiodownload-style override set on the bundle since its attempt
    began, if it set one (``Bundle._status_msg`` reads a word for every bundle)."""
    said = bundle.__dict__.get("_status_msg")
    return None if said is None else str(said)


@dataclass(eq=False)
class Bundle:
    """One URL's download: the input (url, info, params) and the outcome.

    ``state`` is one of ``pending``, ``written``, ``cached``, ``failed`` or ``skipped``; on
    failure or skip, ``error_kind`` (an ``ErrorKind`` value) and ``error_message`` say why.
    ``host`` is the host key (``host`` or ``host:port``) the bundle was scheduled under.
    ``params`` are sent as the query string of a GET, never as a POST body.
    """

    url: str
    info: Any = None
    params: dict[str, Any] | None = None
    file_path: str | None = None
    state: str = PENDING
    status: int | None = None
    attempts: int = 0
    bytes: int = 0
    sha256: str | None = None
    elapsed: float = 0.0
    error_kind: str | None = None
    error_message: str | None = None
    host: str | None = field(default=None, repr=False)
    # Sequence number within one call; set by the coordinator, used for ordering.
    seq: int = field(default=-1, repr=False)
    # The path the last run answered (absolute, maybe displaced), and the one the bundle's
    # owner set (as given, maybe relative, or None): a later run starts from the owner's, so
    # another download computes its own. And the run it is pending in, if any.
    _run_path: str | None = field(default=None, init=False, repr=False)
    _own_path: str | None = field(default=None, init=False, repr=False)
    _run: object | None = field(default=None, init=False, repr=False)
    # True when the outcome is a copy of another bundle's (a repeat of its URL): the requests
    # and bytes were counted for that one.
    _shared: bool = field(default=False, init=False, repr=False)
    # True when one of its attempts opened its host's circuit breaker (for the run's stats).
    _opened_breaker: bool = field(default=False, init=False, repr=False)
    # Seconds from starting its last request (connecting, if it did) to that response's
    # headers, None without a response: the host's latency in the run's stats (``elapsed``
    # also counts the wait for the host's turn, and retries).
    _latency: float | None = field(default=None, init=False, repr=False, compare=False)
    # The run that set ``info`` to the input item url_map turned into this bundle: another
    # item of that run it is returned for brings its own; a later run keeps it, or what the
    # owner set since.
    _info_by: object | None = field(default=None, init=False, repr=False, compare=False)
    # True while nobody but the run holds the bundle (made from a plain URL, or ``Handed``
    # over): it may wait on disk and come back as an equal copy. Set for each run.
    _spare: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the download succeeded: written now (by shardload: the file is on disk
        and complete; an ``on_success`` override that stores the body elsewhere, an object
        store say, is taken at its word) or found cached."""
        return self.state in (WRITTEN, CACHED)

    def _begin(self) -> None:
        """Forget an earlier run's outcome, so a bundle can be downloaded again: the path that
        run answered too (the path its owner set, as set, stays)."""
        if self.file_path is None or self.file_path != self._run_path:
            self._own_path = self.file_path  # set (or cleared) by the owner since
        self.file_path = self._own_path
        self._run_path = None
        self.__dict__.pop("_status_msg", None)  # an aiodownload override's word on the last
        self.state = PENDING
        self._shared = False
        self.status = None
        self.attempts = 0
        self.bytes = 0
        self.sha256 = None
        self.elapsed = 0.0
        self._latency = None
        self.error_kind = self.error_message = None

    def fail(self, kind: str, message: str) -> Bundle:
        """Mark the bundle failed with an error kind and a message; returns it."""
        self.state = FAILED
        self.error_kind = kind
        self.error_message = message
        return self

    @property
    def _status_msg(self) -> str:
        """aiodownload's status word: what an override said (``bundle._status_msg = ...``),
        else the word for the state, as aiodownload kept it on every bundle."""
        said = said_by_override(self)
        if said is not None:
            return said
        if self.state == PENDING and self.attempts:
            return SAID_TRY_AGAIN
        return _STATUS_WORDS.get(self.state, self.state)

    @_status_msg.setter
    def _status_msg(self, word: str) -> None:
        self.__dict__["_status_msg"] = word

    @property
    def num_tries(self) -> int:
        """aiodownload's name for ``attempts`` (its overrides count ``num_tries += 1``)."""
        return self.attempts

    @num_tries.setter
    def num_tries(self, value: int) -> None:
        self.attempts = value

    @property
    def status_msg(self) -> str:
        """aiodownload's summary line, as it was (``Status:`` its ``_status_msg`` word): the
        reason for a failure is in ``error_kind`` and ``error_message``."""
        return (
            f"[URL: {self.url}, File Path: {self.file_path}, "
            f"Attempts: {self.attempts}, Status: {self._status_msg}]"
        )

    def to_record(self) -> dict[str, Any]:
        """The manifest record of this bundle (JSON-serialisable except ``info``)."""
        return {
            "url": self.url,
            "path": self.file_path,
            "state": self.state,
            "status": self.status,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "attempts": self.attempts,
            "elapsed": round(self.elapsed, 6),
            "error_kind": None if self.error_kind is None else str(self.error_kind),
            "error_message": self.error_message,
            "info": self.info,
        }


AioDownloadBundle = Bundle


# What crosses to a worker: (seq, url, params, info-or-None, preset file_path, extra). Plain data
# (rule 3). ``extra`` is None for a plain Bundle; for a subclass, or one carrying attributes of
# its own, it is (class, those attributes), so that a strategy's override sees them as in
# aiodownload, where the caller's bundle object itself reached the strategy.
Extra = tuple[type["Bundle"], dict[str, Any]]
Job = tuple[int, str, "dict[str, Any] | None", Any, "str | None", "Extra | Packed | None"]


class Packed(bytes):
    """An ``info`` or ``extra`` pickled on its own for a spawned worker, which loads it job by
    job: one naming a class the worker cannot import (defined under the script's main guard,
    in a notebook, in a module loaded from a file its import path does not reach) then
    arrives as None (a plain Bundle), instead of failing the whole batch in the worker."""

    __slots__ = ()

    def load(self) -> Any:
        """The value, or None when it cannot be loaded here."""
        try:
            return pickle.loads(self)
        except Exception:
            return None


# What comes back: (seq, file_path, state, status, attempts, bytes, sha256, elapsed, kind, message,
# opened_breaker, latency, attrs). ``attrs`` is None, or the attributes of its own that the
# bundle was given during the download (by a strategy's ``on_success``/``on_fail``, say) and
# that pickle, as aiodownload's caller saw them on its bundle object.
Result = tuple[
    int,
    "str | None",
    str,
    "int | None",
    int,
    int,
    "str | None",
    float,
    "str | None",
    "str | None",
    bool,
    "float | None",
    "dict[str, Any] | None",
]


_FIELDS = frozenset(f.name for f in fields(Bundle))


def extra_of(bundle: Bundle) -> Extra | None:
    """What a worker needs, beyond the plain fields, to rebuild this bundle as the caller's
    class with the caller's own attributes; None for a plain Bundle (the common case)."""
    attrs = vars(bundle)
    if type(bundle) is Bundle and attrs.keys() <= _FIELDS:
        return None
    return type(bundle), {k: v for k, v in attrs.items() if k not in _FIELDS}


def from_job(job: Job) -> tuple[Bundle, dict[str, Any] | None]:
    """The bundle a worker downloads for a job (fresh outcome fields, the caller's inputs),
    and the attributes of its own the job gave it."""
    seq, url, params, info, file_path, extra = job
    if isinstance(info, Packed):
        info = info.load()
    if isinstance(extra, Packed):
        extra = extra.load()
    if extra is None:
        bundle = Bundle(url, info=info, params=params, file_path=file_path)
    else:
        cls, attrs = extra
        bundle = cls.__new__(cls)  # not cls(...): a subclass's __init__ may want other arguments
        Bundle.__init__(bundle, url, info=info, params=params, file_path=file_path)
        bundle.__dict__.update(attrs)
    bundle.seq = seq
    return bundle, None if extra is None else extra[1]


def to_result(bundle: Bundle, given: dict[str, Any] | None = None) -> Result:
    """The outcome of ``bundle``; ``given`` are the attributes its job carried (not sent back
    unless rebound, so the caller keeps its own objects)."""
    kind = None if bundle.error_kind is None else str(bundle.error_kind)
    return (
        bundle.seq,
        bundle.file_path,
        bundle.state,
        bundle.status,
        bundle.attempts,
        bundle.bytes,
        bundle.sha256,
        bundle.elapsed,
        kind,
        bundle.error_message,
        bundle._opened_breaker,
        bundle._latency,
        None if vars(bundle).keys() <= _FIELDS else _new_attributes(bundle, given or {}),
    )


def _new_attributes(bundle: Bundle, given: dict[str, Any]) -> dict[str, Any] | None:
    own = {
        k: v
        for k, v in vars(bundle).items()
        if k not in _FIELDS and (k not in given or given[k] is not v)
    }
    if own and why_unpicklable(own) is not None:
        # One attribute that cannot cross a process (a response object, an open file) is left
        # behind alone, in every mode, so a run's outcome does not depend on ``processes``.
        own = {k: v for k, v in own.items() if why_unpicklable(v) is None}
    return own or None


def sendable_results(results: list[Result]) -> list[Result]:
    """``results`` as a worker may send them back: a strategy may have set a bundle's own
    field to what cannot cross (a hash object for sha256, say), and that bundle then fails.
    Unsent, the coordinator would wait for ever; sent but not loadable there, it would be
    taken for the worker's crash. Plain fields (the rule) are checked by type alone."""
    if all(_PLAIN.issuperset(map(type, result)) for result in results):
        return results
    return [sendable(result) for result in results]


_PLAIN = frozenset({str, int, float, bool, type(None)})  # what a result's fields are made of


def sendable(result: Result) -> Result:
    """``result`` itself if it pickles; else a failure of its bundle (kind ``strategy``)
    naming the fields a strategy set to something that cannot cross a process."""
    if why_unpicklable(result) is None:
        return result
    bad = [
        name for name, value in zip(_RESULT_FIELDS, result, strict=True) if why_unpicklable(value)
    ]
    seq, path, _, status, attempts, size, _, elapsed = result[:8]
    message = f"a strategy set {', '.join(bad)} to what cannot be sent back from the worker"
    return (
        seq,
        path if isinstance(path, str) else None,
        FAILED,
        status if isinstance(status, int) else None,
        attempts if isinstance(attempts, int) else 0,
        size if isinstance(size, int) else 0,
        None,
        elapsed if isinstance(elapsed, float) else 0.0,
        str(ErrorKind.STRATEGY),
        message,
        False,
        None,
        None,
    )


_RESULT_FIELDS = (
    "seq", "file_path", "state", "status", "attempts", "bytes", "sha256", "elapsed",
    "error_kind", "error_message", "opened_breaker", "latency", "attributes",
)  # fmt: skip


def _round_trip(value: object) -> bytes:
    """``value`` pickled, once that pickle is seen to load back here (raises otherwise)."""
    pickled = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    pickle.loads(pickled)
    return pickled


def loadable_pickle(value: object) -> bytes | None:
    """``value`` pickled, when that pickle also loads back here; else None."""
    try:
        return _round_trip(value)
    except Exception:
        return None


def why_unpicklable(value: object) -> str | None:
    """Why ``value`` cannot make the trip to another process, or None when it can: pickled,
    and read back (an exception class whose ``__init__`` wants other arguments pickles but
    does not load)."""
    try:
        _round_trip(value)
    except Exception as exc:
        try:
            text = str(exc)
        except Exception:  # the caller's exception class may fail at that too
            text = "<unprintable>"
        return f"{type(exc).__name__}: {text}"
    return None


def apply_result(bundle: Bundle, result: Result, *, shared: bool = False) -> Bundle:
    """Copy a worker's outcome onto the caller's bundle (which keeps its own ``info``);
    ``shared`` when the outcome is another bundle's, given to a repeat of its URL."""
    (
        _,
        bundle.file_path,
        bundle.state,
        bundle.status,
        bundle.attempts,
        bundle.bytes,
        bundle.sha256,
        bundle.elapsed,
        bundle.error_kind,
        bundle.error_message,
        bundle._opened_breaker,
        bundle._latency,
        attrs,
    ) = result
    bundle._run_path = bundle.file_path  # the run's answer, not the bundle's own
    # A kind crosses processes as its plain string: the caller gets the ErrorKind again (one
    # type, whichever side failed the bundle; a strategy's own kind stays a string).
    kind = bundle.error_kind
    if kind is not None and kind in _KINDS:
        bundle.error_kind = ErrorKind(kind)
    bundle._shared = shared
    if attrs:
        bundle.__dict__.update(attrs)
    return bundle
