class RequestError(RuntimeError):
    """An error the executor reports for one request (raised while iterating its result)."""
