"""storageUri parsing, table-driven: what each scheme accepts, what it refuses and why, and that the
shown form never carries a password or a query string."""

from __future__ import annotations

import pytest

from runtime.storage.uri import StorageUriError, check_sha256, parse_uri


@pytest.mark.parametrize(("text", "scheme", "host", "path", "display"), [
    ("s3://models/iris/", "s3", "models", "iris/", "s3://models/iris/"),
    ("s3://models", "s3", "models", "", "s3://models/"),
    ("s3://my.bucket-1/a/b.onnx", "s3", "my.bucket-1", "a/b.onnx", "s3://my.bucket-1/a/b.onnx"),
    ("pvc://model-store/iris", "pvc", "model-store", "iris", "pvc://model-store/iris"),
    ("https://example.com/m/model.tar.gz", "https", "example.com", "m/model.tar.gz",
     "https://example.com/m/model.tar.gz"),
    ("http://127.0.0.1:9000/m.onnx?X-Amz-Signature=secret", "http", "127.0.0.1:9000", "m.onnx",
     "http://127.0.0.1:9000/m.onnx?…"),
    ("https://user:pass@example.com/m.zip", "https", "example.com", "m.zip", "https://example.com/m.zip"),
    ("file:///srv/models/iris", "file", "", "/srv/models/iris", "file:///srv/models/iris"),
    ("/srv/models/./iris/", "file", "", "/srv/models/iris", "file:///srv/models/iris"),
])
def test_accepted(text, scheme, host, path, display):
    uri = parse_uri(text)
    assert (uri.scheme, uri.host, uri.path, uri.display) == (scheme, host, path, display)
    assert "secret" not in uri.display and "pass" not in uri.display
    assert "secret" not in uri.cache_identity and "pass" not in uri.cache_identity


@pytest.mark.parametrize(("text", "reason"), [
    ("", "must not be empty"),
    ("gs://bucket/model", "unsupported storageUri scheme gs://"),
    ("models/iris", "unsupported storageUri scheme"),
    ("relative/path", "unsupported storageUri scheme"),
    ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
    ("s3://user:key@bucket/x", "credentials come from a Secret"),
    ("s3://bucket/../x", "must not contain '..'"),
    ("s3://bucket/x?versionId=1", "no query"),
    ("pvc://Claim/x", "not a valid PersistentVolumeClaim name"),
    ("http:///model.onnx", "without a host"),
    ("https://example.com/models/", "one file or archive"),
    ("file://host/x", "file:///abs/path"),
    ("s3://bucket/a\nb", "control characters"),
    ("https://example.com/" + "a" * 3000, "longer than 2048"),
])
def test_refused(text, reason):
    with pytest.raises(StorageUriError, match=reason.replace("?", r"\?").replace(".", r"\.")):
        parse_uri(text)


def test_archives_are_told_by_their_name():
    assert parse_uri("https://h/m.tar.gz").is_archive and parse_uri("https://h/m.TGZ").is_archive
    assert parse_uri("s3://bucket/m.zip").is_archive and not parse_uri("s3://bucket/m.onnx").is_archive


def test_two_presigned_urls_of_one_object_are_two_cache_locations():
    a, b = parse_uri("https://h/m.onnx?sig=1"), parse_uri("https://h/m.onnx?sig=2")
    assert a.display == b.display and a.cache_identity != b.cache_identity


@pytest.mark.parametrize(("text", "ok"), [("A" * 64, True), ("a" * 63, False), ("g" * 64, False), ("", False)])
def test_sha256(text, ok):
    if ok:
        assert check_sha256(text) == text.lower()
    else:
        with pytest.raises(StorageUriError, match="64 hexadecimal digits"):
            check_sha256(text)
