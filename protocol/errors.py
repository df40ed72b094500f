"""A request the server refuses, and the server's own failures: each answered alone with its status and
answers.ErrorAnswer's JSON."""


class RequestError(ValueError):
    """A request that cannot be classified (empty text, wrong JSON shape, bad encoding, ...): 4xx."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class Failure(RequestError):
    """The server's fault, not the request's: answered with 500 and the same JSON shape."""

    def __init__(self, message):
        super().__init__(message, 500)
