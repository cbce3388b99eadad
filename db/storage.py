"""Object storage behind one small interface: a local directory (default) or S3 (AWS, MinIO, ...).

Writers go through a temporary file first: a failed or refused upload never leaves an object behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class StorageUnavailable(Exception):
    """Object storage did not answer (unreachable, timed out, or a 5xx): a failure of the service's storage, not of
    the request or the job. The API answers it with 503, the worker retries it for a while."""


@dataclass
class Stored:
    key: str
    size: int
    sha256: str


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def open_chunks(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def ping(self) -> None: ...
    def presigned_url(self, key: str, seconds: int, filename: str) -> str | None: ...
    def list(self) -> Iterator[tuple[str, float]]: ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return p

    def put_file(self, key: str, path: Path) -> None:
        self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda tmp: tmp.write_bytes(data))

    def _write(self, key: str, fill: Callable[[Path], object]) -> None:
        dest = self._path(key)
        tmp = dest.with_name(f".{dest.name}.partial")
        for attempt in range(3):  # a delete of the folder's last other file may remove it under us: remake it
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fill(tmp)
                os.replace(tmp, dest)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open_chunks(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while block := f.read(chunk):
                yield block

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # As in S3, a folder exists only while something is in it: a deleted job leaves no empty tree.
        root = self.root.resolve()
        for parent in path.parents:
            if parent == root:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop there
                break

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"storage root {self.root} is missing")

    def presigned_url(self, key: str, seconds: int, filename: str) -> str | None:
        return None  # local files are served by the API only

    def list(self) -> Iterator[tuple[str, float]]:
        """Every stored file's key and modification time (seconds since 1970), temporary `.partial` files too."""
        root = self.root.resolve()
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    yield str(path.relative_to(root)), path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue


class S3Storage:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # SigV4 for presigned URLs too (the signature covers their expiry; SigV2 is refused in newer regions). An
        # endpoint that does not answer fails a request in seconds (botocore's defaults: 60 s to connect, 5 tries
        # with the legacy retry mode), so an upload or a download answers 503 instead of hanging for minutes.
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            signature_version="s3v4", connect_timeout=5, read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        with _unavailable():
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        with _unavailable():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with _unavailable():
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def open_chunks(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with _unavailable():
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            yield from body.iter_chunks(chunk)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with _unavailable():
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        with _unavailable():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def ping(self) -> None:
        with _unavailable():
            self.client.head_bucket(Bucket=self.bucket)

    def list(self) -> Iterator[tuple[str, float]]:
        """Every object's key (without the service's prefix) and its last-modified time (seconds since 1970)."""
        start = f"{self.prefix}/" if self.prefix else ""
        with _unavailable():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(start):], obj["LastModified"].timestamp()

    def presigned_url(self, key: str, seconds: int, filename: str) -> str | None:
        """A GET URL for one object that anyone holding it may use until it expires, `seconds` from now; signed
        locally with the service's credentials (no request to S3)."""
        return str(self.client.generate_presigned_url(
            "get_object", ExpiresIn=seconds, Params={
                "Bucket": self.bucket, "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"'}))


@contextmanager
def _unavailable() -> Iterator[None]:
    """botocore's failures to reach S3 (refused, timed out, cut) and S3's own 5xx answers become StorageUnavailable;
    4xx answers (NoSuchKey, AccessDenied) stay what they are."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except BotoCoreError as e:
        raise StorageUnavailable(f"{type(e).__name__}: {e}") from e
    except (ClientError, S3UploadFailedError) as e:
        # upload_file wraps a ClientError in S3UploadFailedError, keeping it as the context
        client_error = e if isinstance(e, ClientError) else e.__context__
        status = (getattr(client_error, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if isinstance(status, int) and status >= 500:
            raise StorageUnavailable(f"S3 answered {status}: {e}") from e
        raise


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path, endpoint_url)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket")


async def spool(chunks: AsyncIterator[bytes], limit: int, tmp_dir: Path) -> tuple[Path, int, str]:
    """Write a stream to a temporary file, hashing as it goes and refusing it past `limit` bytes."""
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for block in chunks:
                size += len(block)
                if size > limit:
                    raise TooLarge(limit)
                digest.update(block)
                f.write(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, size, digest.hexdigest()
