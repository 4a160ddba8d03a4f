"""Your exercise files. Replace each `raise NotImplementedError`; each docstring states the API."""
