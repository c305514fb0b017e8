"""One storage interface for datasets, checkpoints and models.

A `Store` reads and writes URIs and picks the backend by scheme on every call, so the recipe never asks
where its bytes live:

| URI                         | read | write | where the bytes are                                          |
|-----------------------------|------|-------|--------------------------------------------------------------|
| `/path`, `file:///path`     | yes  | yes   | the local filesystem (the embedded default, `tooltune run`)  |
| `s3://bucket/key`           | yes  | yes   | S3 or an S3-compatible server: `storage.endpoint`, `.region`,|
|                             |      |       | `.pathStyle`; credentials from AWS_ACCESS_KEY_ID and         |
|                             |      |       | AWS_SECRET_ACCESS_KEY, which the operator injects from       |
|                             |      |       | the Secret named in `storage.credentialsSecret`              |
| `https://host/file`         | yes  | no    | a web server; bounded timeout and size                       |
| `configmap://<name>/<key>`  | yes  | no    | key `<key>` of ConfigMap `<name>`, mounted by the operator   |
|                             |      |       | at `$TOOLTUNE_CONFIGMAP_DIR/<name>/<key>`                    |
|                             |      |       | (default `/etc/tooltune/data/<name>/<key>`)                  |

How long a silent server is waited for and how large a dataset may be are `StorageLimits`, read from the
environment (`TOOLTUNE_STORAGE_CONNECT_TIMEOUT_SECONDS`, `TOOLTUNE_STORAGE_READ_TIMEOUT_SECONDS`,
`TOOLTUNE_DATASET_MAX_BYTES`); the operator sets them on every trainer pod from its own settings.

URIs ending in a "directory" (`list`, `upload_dir`, `delete_prefix`) are treated as prefixes that end with
`/`, so `…/step-1` never matches `…/step-10`. Every failure is a `StorageError` whose message names the
URI and the cause, and never a credential.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tooltune_api.models import Storage
from tooltune_api.settings import (
    DATASET_MAX_BYTES_ENV,
    STORAGE_CONNECT_TIMEOUT_ENV,
    STORAGE_READ_TIMEOUT_ENV,
    Number,
    positive,
)

CONFIGMAP_DIR_ENV = "TOOLTUNE_CONFIGMAP_DIR"
DEFAULT_CONFIGMAP_DIR = "/etc/tooltune/data"


HTTP_CHUNK_BYTES = 1024 * 1024
HTTP_REDIRECT = 300
HTTP_SERVER_ERROR = 500
HTTP_TRANSIENT_CODES = {408, 429}  # timeout, too many requests: worth another try

S3_MAX_ATTEMPTS = 3  # botocore's own retries of one request; checkpoint uploads retry on top of these
S3_MAX_CONCURRENCY = 10  # parallel requests of one transfer (parts and files)
S3_MULTIPART_BYTES = 8 * 1024**2
S3_DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts

ACCESS_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")
OBJECT_READS = {"GetObject", "HeadObject"}  # answers that carry the stored object's own Content-Type


class StorageError(RuntimeError):
    """A storage operation failed; the message says which URI and why, never a credential.

    retryable is False when trying again cannot help until someone changes something (credentials, bucket,
    URI): a pod should then fail at once with this message rather than be retried.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class StorageLimits:
    """How long the trainer waits for a storage server and how large a dataset it downloads.

    Timeouts bound each connection attempt and each wait for the next bytes, not a whole download, so a
    large file on a slow but live server still arrives while a silent server fails in bounded time.
    """

    connect_timeout_seconds: float = 10  # S3 connection set-up
    read_timeout_seconds: float = 60  # S3 and https: the longest silence; https also connects within it
    dataset_max_bytes: int = 4 * 1024**3  # a larger dataset is refused before it fills the pod's disk

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageLimits:
        """Read the limits from TOOLTUNE_* variables; unset means the default, a bad value is an error."""
        env = os.environ if env is None else env
        return cls(
            connect_timeout_seconds=_positive(
                env, STORAGE_CONNECT_TIMEOUT_ENV, float, cls.connect_timeout_seconds
            ),
            read_timeout_seconds=_positive(env, STORAGE_READ_TIMEOUT_ENV, float, cls.read_timeout_seconds),
            dataset_max_bytes=_positive(env, DATASET_MAX_BYTES_ENV, int, cls.dataset_max_bytes),
        )


def _positive(env: Mapping[str, str], name: str, kind: type[Number], default: Number) -> Number:
    try:
        return positive(env, name, kind, default)
    except ValueError as error:
        raise StorageError(str(error), retryable=False) from None


def _too_large(uri: str, size: str, limit: int) -> StorageError:
    return StorageError(
        f"{uri}: {size} the {limit} byte dataset limit; use a smaller dataset, or have the operator's "
        f"{DATASET_MAX_BYTES_ENV} raised",
        retryable=False,
    )


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI or local path: join('s3://b/out/', 'final') == 's3://b/out/final'."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


def scheme(uri: str) -> str:
    """'s3', 'https', 'http', 'configmap' or 'file' (plain paths count as file)."""
    parsed = urlparse(uri)
    return parsed.scheme if len(parsed.scheme) > 1 else "file"  # 'C:' is a drive, not a scheme


def _files_under(local: Path) -> list[Path]:
    return sorted(p for p in local.rglob("*") if p.is_file())


# ---------------------------------------------------------------- backends


class _LocalBackend:
    def fetch_many(self, items: list[tuple[str, Path]], max_bytes: int | None = None) -> None:
        for uri, dest in items:
            source = local_path(uri)
            if not source.is_file():
                raise StorageError(f"{uri}: no such file", retryable=False)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)

    def upload_many(self, items: list[tuple[Path, str]]) -> None:
        for local, uri in items:
            target = local_path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            # copy beside the target, then rename: a reader never sees half a file
            partial = target.with_name(f".{target.name}.partial")
            try:
                shutil.copyfile(local, partial)
                partial.replace(target)
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise StorageError(f"{uri}: cannot write ({error.strerror})") from None

    def list(self, uri: str) -> list[str]:
        root = local_path(uri)
        if not root.is_dir():
            return []
        return [p.relative_to(root).as_posix() for p in _files_under(root) if not p.name.startswith(".")]

    def delete_prefix(self, uri: str) -> None:
        shutil.rmtree(local_path(uri), ignore_errors=True)

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)


class _ReadOnlyBackend:
    """Datasets only: https:// and configmap:// can be read, never written or listed."""

    def upload_many(self, items: list[tuple[Path, str]]) -> None:
        raise StorageError(
            f"{items[0][1]}: cannot write here; use an s3:// URI or a local path", retryable=False
        )

    def list(self, uri: str) -> list[str]:
        raise StorageError(f"{uri}: cannot list; use an s3:// URI or a local path", retryable=False)

    def delete_prefix(self, uri: str) -> None:
        raise StorageError(f"{uri}: cannot delete; use an s3:// URI or a local path", retryable=False)

    delete = delete_prefix


class _HttpBackend(_ReadOnlyBackend):
    def __init__(self, limits: StorageLimits):
        self.limits = limits

    def fetch_many(self, items: list[tuple[str, Path]], max_bytes: int | None = None) -> None:
        for uri, dest in items:  # https serves datasets only, so every download is held to the dataset cap
            self._fetch(uri, dest, max_bytes or self.limits.dataset_max_bytes)

    def _fetch(self, uri: str, dest: Path, max_bytes: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        timeout = self.limits.read_timeout_seconds
        try:
            with urllib.request.urlopen(uri, timeout=timeout) as response:
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > max_bytes:
                    raise _too_large(uri, f"{declared} bytes is over", max_bytes)
                received = 0
                with partial.open("wb") as out:
                    while chunk := response.read(HTTP_CHUNK_BYTES):
                        received += len(chunk)
                        if received > max_bytes:
                            raise _too_large(uri, "it is larger than", max_bytes)
                        out.write(chunk)
            partial.replace(dest)
        except urllib.error.HTTPError as error:
            transient = error.code >= HTTP_SERVER_ERROR or error.code in HTTP_TRANSIENT_CODES
            raise StorageError(f"{uri}: HTTP {error.code} {error.reason}", retryable=transient) from None
        except urllib.error.URLError as error:
            raise StorageError(f"{uri}: cannot connect ({error.reason})") from None
        except TimeoutError:
            raise StorageError(f"{uri}: no answer within {timeout:g} s") from None
        finally:
            partial.unlink(missing_ok=True)


def configmap_file(uri: str) -> Path:
    """Where the operator mounts configmap://<name>/<key>."""
    parsed = urlparse(uri)
    key = parsed.path.strip("/")
    if not parsed.netloc or not key or "/" in key:
        raise StorageError(f"{uri}: write a ConfigMap key as configmap://<name>/<key>", retryable=False)
    return Path(os.environ.get(CONFIGMAP_DIR_ENV, DEFAULT_CONFIGMAP_DIR)) / parsed.netloc / key


class _ConfigMapBackend(_ReadOnlyBackend):
    def fetch_many(self, items: list[tuple[str, Path]], max_bytes: int | None = None) -> None:
        for uri, dest in items:
            source = configmap_file(uri)
            if not source.is_file():
                name = urlparse(uri).netloc
                raise StorageError(
                    f"{uri}: not found at {source}; check that ConfigMap {name} exists in the "
                    "job's namespace and has this key",
                    retryable=False,
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)


class _NotS3Answer(Exception):
    """The endpoint answered a web page where S3 answers XML or an object."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status} with an HTML page")
        self.status = status


def _refuse_html_answers(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    """botocore `before-parse` hook: S3 never answers an operation, or an error, with a web page.

    A captive portal, proxy login or plain web server at the endpoint does, with 200 or 5xx alike: left to
    botocore, a 200 reads as an empty listing or an upload that "succeeded", and a 5xx as an S3 error worth
    retrying. Only a stored object's own answer may be HTML (someone may store an HTML file), and then S3
    sends its ETag, which a web page in its place lacks.
    """
    headers = response_dict["headers"]
    if not str(headers.get("content-type", "")).lower().startswith(HTML_CONTENT_TYPES):
        return
    status = int(response_dict["status_code"])
    if status < HTTP_REDIRECT and operation_model.name in OBJECT_READS and "etag" in headers:
        return
    raise _NotS3Answer(status)


class _S3Backend:
    """boto3 with the spec's endpoint, region and addressing; transfers through s3transfer."""

    def __init__(self, settings: Storage, limits: StorageLimits):
        self.settings = settings
        self.limits = limits
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                s3={"addressing_style": "path" if self.settings.path_style else "auto"},
                retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                connect_timeout=self.limits.connect_timeout_seconds,
                read_timeout=self.limits.read_timeout_seconds,
                max_pool_connections=S3_MAX_CONCURRENCY,
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.settings.endpoint, region_name=self.settings.region, config=config
            )
            self._client.meta.events.register("before-parse.s3", _refuse_html_answers)
        return self._client

    def _transfers(self) -> Any:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=S3_MULTIPART_BYTES,
            multipart_chunksize=S3_MULTIPART_BYTES,
            max_concurrency=S3_MAX_CONCURRENCY,
        )
        return create_transfer_manager(self.client, config)

    def fetch_many(self, items: list[tuple[str, Path]], max_bytes: int | None = None) -> None:
        if max_bytes:
            for uri, _ in items:
                self._check_size(uri, max_bytes)
        partials = []
        for _, dest in items:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partials.append(dest.with_name(f".{dest.name}.partial"))
        try:
            self._run(
                [
                    (uri, lambda m, uri=uri, p=p: m.download(*_split(uri), str(p)))
                    for (uri, _), p in zip(items, partials, strict=True)
                ]
            )
            for (_, dest), partial in zip(items, partials, strict=True):
                partial.replace(dest)
        finally:
            for partial in partials:
                partial.unlink(missing_ok=True)

    def upload_many(self, items: list[tuple[Path, str]]) -> None:
        self._run(
            [
                (uri, lambda m, uri=uri, local=local: m.upload(str(local), *_split(uri)))
                for local, uri in items
            ]
        )

    def _run(self, transfers: list[tuple[str, Any]]) -> None:
        """Start every transfer on one manager (files run concurrently), then wait for all of them."""
        with self._transfers() as manager:
            futures = []
            for uri, start in transfers:
                try:
                    futures.append((uri, start(manager)))
                except Exception as error:
                    raise self.error(uri, error) from None
            first_error = None
            for uri, future in futures:
                try:
                    future.result()
                except Exception as error:
                    first_error = first_error or self.error(uri, error)
            if first_error is not None:
                raise first_error

    def _check_size(self, uri: str, max_bytes: int) -> None:
        try:
            size = int(self.client.head_object(Bucket=_split(uri)[0], Key=_split(uri)[1])["ContentLength"])
        except Exception as error:
            raise self.error(uri, error) from None
        if size > max_bytes:
            raise _too_large(uri, f"{size} bytes is over", max_bytes)

    def list(self, uri: str) -> list[str]:
        bucket, prefix = _split_prefix(uri)
        names = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
        except Exception as error:
            raise self.error(uri, error) from None
        return sorted(name for name in names if name and not name.endswith("/"))

    def delete_prefix(self, uri: str) -> None:
        bucket, prefix = _split_prefix(uri)
        keys = [prefix + name for name in self.list(uri)]
        self._delete(uri, bucket, keys)

    def delete(self, uri: str) -> None:
        bucket, key = _split(uri)
        self._delete(uri, bucket, [key])

    def _delete(self, uri: str, bucket: str, keys: Sequence[str]) -> None:
        try:
            for start in range(0, len(keys), S3_DELETE_BATCH):
                batch = [{"Key": key} for key in keys[start : start + S3_DELETE_BATCH]]
                answer = self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    failed = answer["Errors"][0]
                    raise StorageError(f"{uri}: cannot delete {failed.get('Key')} ({failed.get('Code')})")
        except StorageError:
            raise
        except Exception as error:
            raise self.error(uri, error) from None

    def error(self, uri: str, error: BaseException) -> StorageError:
        """A message naming the URI and the cause; built from error codes, so no secret can leak into it."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(error, StorageError):
            return error
        endpoint = _endpoint_name(self.settings.endpoint)
        if isinstance(error, _NotS3Answer):
            return StorageError(
                f"{uri}: {endpoint} does not speak S3 (it answered {error}); check storage.endpoint",
                retryable=False,
            )
        secret = self.settings.credentials_secret
        check = (
            f"check the credentials in Secret {secret}"
            if secret
            else "set storage.credentialsSecret to a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return StorageError(f"{uri}: no S3 credentials ({check})", retryable=False)
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", "")) or str(
                error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown")
            )
            bucket = _split(uri)[0]
            # some servers answer a missing bucket with 403 or a bare 404: ask about the bucket itself
            if code == "NoSuchBucket" or (
                code in ACCESS_DENIED_CODES | NOT_FOUND_CODES and self._no_bucket(bucket)
            ):
                return StorageError(
                    f"{uri}: bucket {bucket} does not exist; create it or fix the URI", retryable=False
                )
            if code in ACCESS_DENIED_CODES:
                return StorageError(f"{uri}: access denied ({check})", retryable=False)
            if code in NOT_FOUND_CODES:
                return StorageError(f"{uri}: no such object", retryable=False)
            return StorageError(f"{uri}: S3 error {code}")
        if isinstance(error, ConnectionError | HTTPClientError | TimeoutError | ConnectionRefusedError):
            return StorageError(
                f"{uri}: cannot reach {endpoint} ({type(error).__name__}); "
                "check storage.endpoint and that the server is up"
            )
        return StorageError(f"{uri}: {type(error).__name__}")

    def _no_bucket(self, bucket: str) -> bool:
        try:
            self.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except Exception as error:
            return getattr(error, "response", {}).get("Error", {}).get("Code") == "NoSuchBucket"
        return False


def _endpoint_name(endpoint: str | None) -> str:
    """The endpoint for a message: scheme, host and port, never a user:password@ part."""
    if not endpoint:
        return "AWS S3"
    parsed = urlparse(endpoint)
    host = parsed.hostname or ""
    return f"{parsed.scheme}://{host}:{parsed.port}" if parsed.port else f"{parsed.scheme}://{host}"


def _split(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri}: an S3 URI needs a bucket: s3://<bucket>/<key>", retryable=False)
    return parsed.netloc, parsed.path.lstrip("/")


def _split_prefix(uri: str) -> tuple[str, str]:
    """s3://bucket/dir → (bucket, 'dir/'); the bucket root is ''."""
    bucket, key = _split(uri)
    key = key.strip("/")
    return bucket, f"{key}/" if key else ""


# ---------------------------------------------------------------- the store


class Store:
    """Reads and writes URIs of any supported scheme (see the module docstring)."""

    def __init__(self, settings: Storage | None = None, limits: StorageLimits | None = None):
        self.settings = settings or Storage()
        self.limits = limits or StorageLimits.from_env()
        self._backends: dict[str, Any] = {"file": _LocalBackend()}

    def _backend(self, uri: str) -> Any:
        kind = scheme(uri)
        if kind not in self._backends:
            if kind == "s3":
                self._backends[kind] = _S3Backend(self.settings, self.limits)
            elif kind in {"http", "https"}:
                self._backends[kind] = _HttpBackend(self.limits)
            elif kind == "configmap":
                self._backends[kind] = _ConfigMapBackend()
            else:
                raise StorageError(
                    f"{uri}: unsupported scheme {kind}://; use s3://, https://, "
                    "configmap://<name>/<key> or a local path",
                    retryable=False,
                )
        return self._backends[kind]

    def fetch(self, uri: str, dest: Path) -> Path:
        """Copy one file, such as a dataset, to the local file dest and return dest; a remote file larger
        than limits.dataset_max_bytes is refused before it is downloaded (or, when its size is not
        declared, as soon as it grows past the limit)."""
        self._fetch_many([(uri, dest)], self.limits.dataset_max_bytes)
        return dest

    def fetch_many(self, items: Iterable[tuple[str, Path]]) -> None:
        """Fetch several objects of one scheme (checkpoints, models), concurrently where the backend can."""
        self._fetch_many(list(items), None)

    def _fetch_many(self, items: list[tuple[str, Path]], max_bytes: int | None) -> None:
        if items:
            self._backend(items[0][0]).fetch_many(items, max_bytes)

    def fetch_dir(self, uri: str, dest: Path) -> Path:
        """Copy every object under uri into the local directory dest."""
        self.fetch_many((join(uri, name), dest / name) for name in self.list(uri))
        return dest

    def upload_file(self, local: Path, uri: str) -> None:
        self.upload_many([(local, uri)])

    def upload_many(self, items: Iterable[tuple[Path, str]]) -> None:
        items = list(items)
        if items:
            self._backend(items[0][1]).upload_many(items)

    def upload_dir(self, local: Path, uri: str) -> None:
        """Upload every file under local to uri/<relative path>, concurrently where the backend can."""
        self.upload_many(
            (path, join(uri, path.relative_to(local).as_posix())) for path in _files_under(local)
        )

    def read_bytes(self, uri: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="tooltune-read-") as tmp:
            self.fetch_many([(uri, Path(tmp) / "object")])
            return (Path(tmp) / "object").read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="tooltune-write-") as tmp:
            path = Path(tmp) / "object"
            path.write_bytes(data)
            self.upload_file(path, uri)

    def list(self, uri: str) -> list[str]:
        """Relative names of all objects under uri (recursive), sorted."""
        return self._backend(uri).list(uri)

    def delete(self, uri: str) -> None:
        """Delete one object; deleting what is not there is not an error."""
        self._backend(uri).delete(uri)

    def delete_prefix(self, uri: str) -> None:
        self._backend(uri).delete_prefix(uri)


def open_store(settings: Storage | None = None, limits: StorageLimits | None = None) -> Store:
    """A Store for the spec's storage settings; limits default to the environment's (StorageLimits)."""
    return Store(settings, limits)
