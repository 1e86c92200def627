"""Run files in object storage (``NB2SVC_STORAGE_URL=s3://bucket/prefix``), through boto3.

A run executes in a local folder (``NB2SVC_RUNS_DIR/{id}``); when it ends, its executed notebook and artifacts
are uploaded under ``prefix/{id}/``. Any replica then answers ``/notebook`` and ``/artifacts/…`` by
downloading the object into its own cache (``NB2SVC_RUNS_DIR/.s3-cache``, cleared at start): the service
streams the file itself, so callers need no S3 credentials and no route to the bucket. A finished run's
files never change, so a cached copy stays right; a DELETE removes the objects and this replica's copy.
The cache holds ``NB2SVC_S3_CACHE_BYTES`` (1 GiB) at most: past that, the files used least recently go (never
one used in the last few seconds, which a response may still be opening; it is downloaded again when asked).

boto3 reads the standard AWS settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO or moto).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from . import Problem
from .disk import list_files, writable_problem

_FILES = ("notebook.ipynb",)
_IN_USE_S = 5.0  # a cached file used this recently is not evicted: a response may still be opening it


class S3Storage:
    def __init__(self, url: str, root: Path, cache_bytes: int = 1024 * 1024 * 1024) -> None:
        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.root = root
        self.cache = root / ".s3-cache"
        self.cache_bytes = cache_bytes
        shutil.rmtree(self.cache, ignore_errors=True)
        self._s3: Any = boto3.client("s3")

    def problem(self) -> Problem | None:
        return writable_problem(self.root)

    def work_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def _key(self, run_id: str, rel: str) -> str:
        return "/".join(p for p in (self.prefix, run_id, rel) if p)

    async def publish(self, run_id: str) -> None:
        """Upload what the run wrote, then drop the local copy (the bucket is where it lives now)."""
        work = self.work_dir(run_id)
        files = [f for f in _FILES if (work / f).is_file()]
        files += [f"artifacts/{rel}" for rel in list_files(work / "artifacts")]
        for rel in files:
            await asyncio.to_thread(self._s3.upload_file, str(work / rel), self.bucket, self._key(run_id, rel))
        for child in work.iterdir():  # the run's files; the embedded store keeps its record (run.json) here too
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif not child.name.startswith("run.json"):
                child.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # empty unless a record is kept here
            work.rmdir()

    async def notebook(self, run_id: str) -> Path | None:
        local = self.work_dir(run_id) / "notebook.ipynb"
        if local.is_file():  # running here: the notebook as far as it has run
            return local
        return await self._fetch(run_id, "notebook.ipynb")

    async def artifact(self, run_id: str, rel: str) -> Path | None:
        clean = PurePosixPath(rel)
        if clean.is_absolute() or ".." in clean.parts or rel.endswith("/"):
            return None
        return await self._fetch(run_id, f"artifacts/{clean}")

    async def _fetch(self, run_id: str, rel: str) -> Path | None:
        path = self.cache / run_id / rel
        if path.is_file():
            os.utime(path)  # its use, for the eviction order
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            await asyncio.to_thread(self._s3.download_file, self.bucket, self._key(run_id, rel), str(tmp))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise OSError(f"s3://{self.bucket}/{self._key(run_id, rel)}: {e}") from e
        except BotoCoreError as e:
            raise OSError(f"s3://{self.bucket}/{self._key(run_id, rel)}: {e}") from e
        tmp.replace(path)
        await asyncio.to_thread(self._trim, path)
        return path

    def _trim(self, keep: Path) -> None:
        """Remove the least recently used files until the cache holds ``cache_bytes`` at most."""
        files = []
        for path in self.cache.rglob("*"):
            try:
                if path.is_file() and not path.name.endswith(".part"):
                    st = path.stat()
                    files.append((st.st_mtime, st.st_size, path))
            except OSError:  # removed meanwhile (a DELETE)
                continue
        total = sum(size for _, size, _ in files)
        recent = time.time() - _IN_USE_S
        for mtime, size, path in sorted(files):
            if total <= self.cache_bytes:
                break
            if path != keep and mtime < recent:
                path.unlink(missing_ok=True)
                total -= size

    async def delete(self, run_id: str) -> None:
        shutil.rmtree(self.work_dir(run_id), ignore_errors=True)
        shutil.rmtree(self.cache / run_id, ignore_errors=True)

        def remove() -> None:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(run_id, "") + "/"
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

        await asyncio.to_thread(remove)
