"""``python -m shardload``: the command-line tool."""

from shardload.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
