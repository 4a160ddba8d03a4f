"""Your exercise files. Fill in each `raise NotImplementedError`; the API is in docs/API.md."""
