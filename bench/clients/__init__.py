"""Client programs the bench runs as subprocesses, one per contender and run."""
