"""The workloads: URL lists against the bench's nginx, with what each URL must produce.

Hosts are the 8 loopback addresses of ``bench.nginx``; URL ``i`` of a uniform workload goes to
host ``i % 8``. Every item says the body size it must leave on disk (``None``: the URL fails and
must leave no file) and a group, used to time parts of a workload from the files' ctimes
(the fast hosts against the slow one, the hot host against the others).
"""

from __future__ import annotations

from dataclasses import dataclass

from .nginx import HOSTS, SIZES, SLOW_SIZE


@dataclass(frozen=True)
class Item:
    url: str
    host: str
    path: str
    size: int | None
    group: str


@dataclass
class Workload:
    name: str
    description: str
    items: list[Item]
    size_class: str  # which wrk ceiling applies: small, medium or large
    # Groups whose completion time is reported (from file ctimes), in display order.
    groups: tuple[str, ...] = ()

    @property
    def expected_files(self) -> int:
        return sum(1 for item in self.items if item.size is not None)

    @property
    def expected_bytes(self) -> int:
        return sum(item.size or 0 for item in self.items)


# name: (full size, --quick size)
COUNTS: dict[str, tuple[int, int]] = {
    "small": (20_000, 4_000),
    "medium": (2_000, 400),
    "large": (16, 4),
    "skewed": (10_000, 2_000),
    "slow": (7_000, 1_400),
    "failures": (5_000, 1_000),
}
WORKLOADS = tuple(COUNTS)
SLOW_URLS = (200, 40)


def _item(port: int, host: str, path: str, size: int | None, group: str) -> Item:
    return Item(f"http://{host}:{port}{path}", host, path, size, group)


def _uniform(name: str, count: int, port: int) -> list[Item]:
    size = SIZES[name]
    return [
        _item(port, HOSTS[i % len(HOSTS)], f"/{name}/{i}.bin", size, HOSTS[i % len(HOSTS)])
        for i in range(count)
    ]


def build(name: str, port: int, quick: bool = False, slow_delay: float = 0.2) -> Workload:
    count = COUNTS[name][1 if quick else 0]
    if name in ("small", "medium", "large"):
        size = SIZES[name]
        return Workload(
            name,
            f"{count:,} x {_human(size)}, {len(HOSTS)} hosts",
            _uniform(name, count, port),
            name,
        )
    if name == "skewed":
        items = []
        hot = HOSTS[0]
        for i in range(count):
            # 4 of every 5 URLs on the hot host, the rest round-robin over the other 7.
            host = hot if i % 5 else HOSTS[1 + (i // 5) % (len(HOSTS) - 1)]
            group = "hot" if host == hot else "others"
            items.append(_item(port, host, f"/small/{i}.bin", SIZES["small"], group))
        return Workload(
            name,
            f"{count:,} x 1 KiB, 80% on one host, 20% over 7",
            items,
            "small",
            groups=("others", "hot"),
        )
    if name == "slow":
        slow_count = SLOW_URLS[1 if quick else 0]
        fast_hosts, slow_host = HOSTS[:-1], HOSTS[-1]
        items = [
            _item(port, fast_hosts[i % len(fast_hosts)], f"/small/{i}.bin", SIZES["small"], "fast")
            for i in range(count)
        ]
        # Spread the slow URLs evenly through the list, so they start early and keep coming.
        step = max(1, len(items) // slow_count)
        for j in range(slow_count):
            slow = _item(port, slow_host, f"/slow/{j}.bin", SLOW_SIZE, "slow")
            items.insert(j * (step + 1), slow)
        return Workload(
            name,
            f"{count:,} x 1 KiB on 7 fast hosts + {slow_count} x 1 KiB on 1 host that answers "
            f"after {slow_delay:g} s",
            items,
            "small",
            groups=("fast", "slow"),
        )
    if name == "failures":
        items = []
        for i in range(count):
            host = HOSTS[i % len(HOSTS)]
            if i % 10 == 0:
                items.append(_item(port, host, f"/fail404/{i}.bin", None, "404"))
            elif i % 100 == 5:
                items.append(_item(port, host, f"/fail503/{i}.bin", None, "503"))
            else:
                items.append(_item(port, host, f"/small/{i}.bin", SIZES["small"], "ok"))
        return Workload(
            name,
            f"{count:,} x 1 KiB, 10% 404 and 1% 503 (no retries anywhere)",
            items,
            "small",
        )
    raise ValueError(f"unknown workload {name!r}")


def file_counts(quick: bool) -> dict[str, int]:
    """How many files of each size class the server must hold for these workloads."""
    return {
        "small": max(COUNTS[n][1 if quick else 0] for n in ("small", "skewed", "slow", "failures")),
        "medium": COUNTS["medium"][1 if quick else 0],
        "large": COUNTS["large"][1 if quick else 0],
    }


def _human(size: int) -> str:
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    return f"{size >> 10} KiB"
