"""Test support shipped with the package: a real local multi-host HTTP server (demo, tests, bench)."""
