"""The plain configuration a worker process rebuilds an engine from (DESIGN rule 3: only plain,
picklable data crosses a process boundary)."""

from __future__ import annotations

from typing import Any

from .engine import AioDownload


def describe(engine: AioDownload) -> dict[str, Any]:
    """The plain, picklable configuration a worker process rebuilds this engine from: its
    strategies, and for a subclass its class and the attributes it added (its overrides of
    ``main`` and the rest run in the workers too)."""
    config: dict[str, Any] = {
        "download_strategy": engine.download_strategy,
        "request_strategy": engine.request_strategy,
        "host_budgets": dict(engine.host_budgets),
    }
    if type(engine) is not AioDownload:
        own = vars(AioDownload(None, engine.download_strategy, engine.request_strategy))
        config["engine_class"] = type(engine)
        config["engine_attrs"] = {k: v for k, v in vars(engine).items() if k not in own}
    return config


def rebuild(config: dict[str, Any]) -> AioDownload:
    """The engine ``describe`` described, made afresh in a worker."""
    cls: type[AioDownload] = config.get("engine_class", AioDownload)
    engine = cls.__new__(cls)  # not cls(...): a subclass's __init__ may want other arguments
    AioDownload.__init__(
        engine,
        download_strategy=config["download_strategy"],
        request_strategy=config["request_strategy"],
    )
    engine.__dict__.update(config.get("engine_attrs", {}))
    engine.host_budgets = dict(config["host_budgets"])
    return engine
