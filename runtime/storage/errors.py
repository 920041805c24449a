"""The one error of a model pull: what went wrong, said so that a condition, a 503 or an init
container's termination message can show it as is (it never holds a credential)."""

from __future__ import annotations


class StorageError(Exception):
    """A pull failed. `retryable`: the same pull may succeed later (unreachable, timeout, 5xx);
    otherwise it fails the same way until the spec or the stored object changes."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
