"""Test support shipped with the package: a real local multi-host HTTP server.

Used by the demo, the tests and the benchmarks.
"""
