"""Errors raised at the project's edges: data files, checkpoints (requests: protocol/errors.py)."""


class DataError(ValueError):
    """A problem in a data file, located by path and (when known) 1-based line number."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or whose files disagree with each other."""
