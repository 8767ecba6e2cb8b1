"""The ``shardload`` command: batch downloads with a manifest, resume, progress and a summary."""
