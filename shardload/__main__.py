"""``python -m shardload``: the command-line tool."""

from shardload.cli import run

if __name__ == "__main__":
    raise SystemExit(run())
