"""Reference implementations of the course exercises (same API as `exercises/`)."""
