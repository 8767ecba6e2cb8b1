"""Benchmarks of shardload against a local nginx and its peers (``make bench``)."""
