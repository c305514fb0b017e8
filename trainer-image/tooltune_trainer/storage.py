"""One storage interface for datasets, checkpoints and models.

Local paths and file:// URIs serve the embedded default; s3://, https:// and configmap:// are added
beside them behind the same functions, so the recipe never asks where its bytes live.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from tooltune_api.models import Storage


class StorageError(RuntimeError):
    """A storage operation failed; the message says which URI and why, never a credential."""


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI or local path: join('s3://b/out/', 'final') == 's3://b/out/final'."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


class Store:
    """Reads and writes URIs. Only local paths here; remote schemes extend this class."""

    def __init__(self, settings: Storage | None = None):
        self.settings = settings or Storage()

    def fetch(self, uri: str, dest: Path) -> Path:
        """Copy the object at uri to the local file dest and return dest."""
        source = local_path(uri)
        if not source.is_file():
            raise StorageError(f"{uri}: no such file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return dest

    def upload_file(self, local: Path, uri: str) -> None:
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    def upload_dir(self, local: Path, uri: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.upload_file(path, join(uri, path.relative_to(local).as_posix()))

    def list(self, uri: str) -> list[str]:
        """Relative names of all objects under uri (recursive)."""
        root = local_path(uri)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def delete_prefix(self, uri: str) -> None:
        shutil.rmtree(local_path(uri), ignore_errors=True)


def open_store(settings: Storage | None = None) -> Store:
    return Store(settings)
