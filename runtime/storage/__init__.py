"""Model storage: a storageUri (s3://, http(s)://, pvc://, file://, a path) to a read-only model
directory through the node-local cache; used by the storage initializer and the local platform."""

from runtime.storage.cache import ModelCache
from runtime.storage.errors import StorageError
from runtime.storage.pull import ModelVersion, PullLimits, pull

__all__ = ["PullLimits", "ModelCache", "ModelVersion", "StorageError", "pull"]
