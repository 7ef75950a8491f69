"""Where source bytes come from: a local file or an object in S3-compatible storage.

Every chunk of a fanned-out job must read the same bytes. A blob therefore carries a
``pin`` taken when the job is planned (an S3 object's version id or ETag; a local file's
size and modification time) and every later read checks it: S3 reads are conditional
GETs (``VersionId`` or ``If-Match``), so an object overwritten mid-job fails the job with
a clear message instead of mixing two versions.

S3 goes through boto3 rather than pyarrow's S3 filesystem: pyarrow exposes neither an
object's ETag or version id nor conditional GETs, and pinning needs both.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from pynomaly_workers.domain.errors import InvalidSource

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_READ_BUFFER_BYTES = 8 << 20


class SourceUnavailable(ConnectionError):
    """Object storage did not answer (network, throttling, a 5xx): transient, retried."""


class Blob(Protocol):
    """The bytes of one source file or object, pinned to one version."""

    @property
    def uri(self) -> str:
        """Where it is, as the user named it (for messages and the job record)."""

    @property
    def format(self) -> str:
        """``csv`` or ``parquet``, from the name."""

    @property
    def size(self) -> int:
        """Length in bytes."""

    @property
    def pin(self) -> str:
        """Identifies this version; reads fail if the bytes changed."""

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)``."""

    def source(self) -> str | BinaryIO:
        """Something pyarrow reads from: a local path, or a seekable file object."""


def format_of(name: str) -> str:
    """The source format by file name, or ``""``."""
    return FORMATS.get(Path(name).suffix.lower(), "")


def is_object_uri(uri: str) -> bool:
    """True for ``s3://bucket/key``."""
    return uri.startswith("s3://")


# -- local files ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LocalBlob:
    """A file on this worker's file system."""

    path: Path
    uri: str
    size: int
    pin: str

    @property
    def format(self) -> str:
        return format_of(self.path.name)

    def read_range(self, start: int, stop: int) -> bytes:
        self._check_unchanged()
        with self.path.open("rb") as handle:
            handle.seek(start)
            return handle.read(stop - start)

    def fills(self, start: int, buffer: bytearray) -> Iterator[int]:
        """Fill ``buffer`` again and again from byte ``start`` to the end, through one
        open file (checked unchanged once); yields how many bytes each fill read."""
        self._check_unchanged()
        with self.path.open("rb") as handle:
            handle.seek(start)
            while n := handle.readinto(buffer):
                yield n

    def source(self) -> str:
        self._check_unchanged()
        return str(self.path)

    def _check_unchanged(self) -> None:
        if _local_pin(self.path) != self.pin:
            raise InvalidSource(
                f"source {self.uri!r} changed while the job was reading it; a job reads "
                "one version of its input: submit a new job to score the new file"
            )


def open_local(uri: str, *, allowed_roots: tuple[Path, ...], pin: str | None) -> LocalBlob:
    """The local file ``uri`` names, after checking it exists and lies in an allowed root."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise InvalidSource(f"source {uri!r}: use a local path, a file:// URI or s3://bucket/key")
    # resolve(): symlinks and '..' are followed before the check, not after it.
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri).resolve()
    if not any(path.is_relative_to(root) for root in allowed_roots):
        roots = ", ".join(str(root) for root in allowed_roots) or "none"
        raise InvalidSource(
            f"source {uri!r} is outside the allowed folders ({roots}): move the file into "
            "one of them, or have the operator add its folder to PYNOMALY_SOURCE_ROOTS "
            "(a JSON list of folders)"
        )
    if not path.is_file():
        raise InvalidSource(f"source {uri!r} does not exist or is not a file on this worker")
    if format_of(path.name) not in ("csv", "parquet"):
        raise InvalidSource(f"source {uri!r}: use a .csv or .parquet file")
    blob = LocalBlob(path=path, uri=uri, size=path.stat().st_size, pin=_local_pin(path))
    if pin is not None and blob.pin != pin:
        raise InvalidSource(
            f"source {uri!r} changed since the job was planned; a job reads one version "
            "of its input: submit a new job to score the new file"
        )
    return blob


def _local_pin(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


# -- S3-compatible object storage ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach object storage; empty values fall back to boto3's defaults (the
    standard ``AWS_*`` environment variables, shared config files, instance roles)."""

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""


def s3_client(options: S3Options) -> Any:
    """A boto3 S3 client (one per process: create it after fork)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        s3={"addressing_style": "path"} if options.endpoint_url else None,
    )
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint_url or None,
            region_name=options.region or None,
            aws_access_key_id=options.access_key_id or None,
            aws_secret_access_key=options.secret_access_key or None,
            config=config,
        )
    except ValueError as exc:
        raise InvalidSource(
            f"PYNOMALY_S3_ENDPOINT_URL {options.endpoint_url!r} is not usable ({exc}); "
            "give a URL such as https://s3.eu-west-1.amazonaws.com or http://minio:9000"
        ) from None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
    if not bucket or not key or key.endswith("/"):
        raise InvalidSource(
            f"source {uri!r}: name one object as s3://bucket/key (not a bucket or a prefix)"
        )
    if format_of(key) not in ("csv", "parquet"):
        raise InvalidSource(f"source {uri!r}: the key must end in .csv or .parquet")
    return bucket, key


@dataclass(frozen=True, slots=True)
class S3Blob:
    """One version of an object, read with ranged, conditional GETs."""

    client: Any
    uri: str
    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None

    @property
    def format(self) -> str:
        return format_of(self.key)

    @property
    def pin(self) -> str:
        return f"version:{self.version_id}" if self.version_id else f"etag:{self.etag}"

    def read_range(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        version = {"VersionId": self.version_id} if self.version_id else {"IfMatch": self.etag}
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{stop - 1}", **version
            )
            return bytes(answer["Body"].read())
        except Exception as exc:
            raise s3_error(exc, self.uri) from None

    def source(self) -> BinaryIO:
        raw = _RangedFile(self)
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER_BYTES)


def open_s3(client: Any, uri: str, *, pin: str | None) -> S3Blob:
    """The object ``uri`` names (HEAD), pinned to ``pin`` when given."""
    bucket, key = split_s3_uri(uri)
    version_id = pin.removeprefix("version:") if pin and pin.startswith("version:") else None
    try:
        head = client.head_object(
            Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {})
        )
    except Exception as exc:
        raise _missing_bucket(client, bucket, uri) or s3_error(exc, uri) from None
    blob = S3Blob(
        client=client,
        uri=uri,
        bucket=bucket,
        key=key,
        size=int(head["ContentLength"]),
        etag=str(head["ETag"]),
        version_id=head.get("VersionId") if head.get("VersionId") not in (None, "null") else None,
    )
    if pin is not None and blob.pin != pin:
        raise s3_changed(uri)
    return blob


def _missing_bucket(client: Any, bucket: str, uri: str) -> InvalidSource | None:
    """A HEAD answers a bare 404 for a missing bucket and a missing key alike; ask the
    bucket itself so the message names the right one."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404:
            return _no_bucket(bucket, uri)
    except Exception:
        return None
    return None


def _no_bucket(bucket: str, uri: str) -> InvalidSource:
    return InvalidSource(
        f"bucket {bucket!r} does not exist: check the bucket in {uri!r} and that "
        "PYNOMALY_S3_ENDPOINT_URL / PYNOMALY_S3_REGION point at the right storage"
    )


def s3_changed(uri: str) -> InvalidSource:
    return InvalidSource(
        f"source {uri!r} was overwritten while the job was reading it; a job reads one "
        "version of its input: submit a new job to score the new object (or enable bucket "
        "versioning, so running jobs keep reading the version they started on)"
    )


_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
}
_CHANGED = {"PreconditionFailed", "412"}


def s3_error(exc: BaseException, uri: str) -> Exception:
    """A clear error for what went wrong reading ``uri``: the caller's to fix
    (:class:`InvalidSource`), or transient (:class:`SourceUnavailable`, retried)."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    bucket = urlparse(uri).netloc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _client_error(code, status, uri=uri, bucket=bucket, exc=exc)
    if isinstance(exc, EndpointConnectionError):
        return SourceUnavailable(f"object storage did not answer for {uri} ({exc}); retrying")
    if isinstance(exc, OSError | TimeoutError):
        return SourceUnavailable(f"reading {uri} failed ({exc}); retrying")
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return InvalidSource(
            f"no credentials to read {uri}: set PYNOMALY_S3_ACCESS_KEY_ID and "
            "PYNOMALY_S3_SECRET_ACCESS_KEY (or the standard AWS_* variables) on the workers"
        )
    if isinstance(exc, BotoCoreError):
        return SourceUnavailable(f"reading {uri} failed ({exc}); retrying")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _client_error(code: str, status: int, *, uri: str, bucket: str, exc: Exception) -> Exception:
    if code == "NoSuchBucket":
        return _no_bucket(bucket, uri)
    if code in _NOT_FOUND or status == 404:
        return InvalidSource(f"no object {uri!r}: check the key (it must name one object)")
    if code in _DENIED or status == 403:
        return InvalidSource(
            f"access to {uri!r} was denied ({code or status}): give the workers' credentials "
            "s3:GetObject on it, or fix PYNOMALY_S3_ACCESS_KEY_ID / PYNOMALY_S3_SECRET_ACCESS_KEY"
        )
    if code in _CHANGED or status == 412:
        return s3_changed(uri)
    if code == "InvalidRange" or status == 416:
        return s3_changed(uri)  # shorter than when planned: it was replaced
    return SourceUnavailable(f"object storage answered {code or status} for {uri}: {exc}")


class _RangedFile(io.RawIOBase):
    """A seekable, read-only file over ranged GETs of one pinned object version."""

    def __init__(self, blob: S3Blob) -> None:
        self.blob = blob
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.blob.size}
        self.position = max(0, base[whence] + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        stop = min(self.position + len(view), self.blob.size)
        if stop <= self.position:
            return 0
        data = self.blob.read_range(self.position, stop)
        view[: len(data)] = data
        self.position += len(data)
        return len(data)
