"""What runs inside one worker: the engine, its host slots, file writes, error mapping."""
