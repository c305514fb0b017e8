"""Small S3 client for scripts/kind-e2e.sh: wait for the endpoint, upload the example data, list results.

    python tests/e2e/s3tool.py --endpoint http://127.0.0.1:18333 wait
    python tests/e2e/s3tool.py --endpoint ... mb s3://datasets s3://models  # make buckets; fine if they exist
    python tests/e2e/s3tool.py --endpoint ... put s3://datasets/task_api_tool_calling.jsonl FILE
    python tests/e2e/s3tool.py --endpoint ... ls s3://models/tiny-cpu/      # exit 1 when nothing is there

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the e2e SeaweedFS accepts any).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

WAIT_SECONDS = 60.0
ANY_KEY = "tooltune-e2e"


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> (bucket, some/prefix)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SystemExit(f"not an s3:// URI: {uri!r} (expected s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", ANY_KEY),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ANY_KEY),
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30),
    )


def wait(s3: Any, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            s3.list_buckets()
            return
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"S3 endpoint not answering after {seconds:.0f}s: {error}") from None
            time.sleep(1)


def make_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def put(s3: Any, uri: str, path: Path) -> None:
    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise SystemExit(f"{uri}: name the object's key, e.g. s3://{bucket}/{path.name}")
    make_bucket(s3, bucket)
    s3.upload_file(str(path), bucket, key)
    print(f"uploaded {path} to {uri} ({path.stat().st_size} bytes)")


def keys(s3: Any, uri: str) -> list[str]:
    bucket, prefix = split_uri(uri)
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wait", help="wait until the endpoint answers")
    mb_command = commands.add_parser("mb", help="make buckets unless they exist")
    mb_command.add_argument("uris", nargs="+")
    put_command = commands.add_parser("put", help="upload a file, creating the bucket if needed")
    put_command.add_argument("uri")
    put_command.add_argument("file", type=Path)
    ls_command = commands.add_parser("ls", help="list keys under a prefix; exit 1 when there are none")
    ls_command.add_argument("uri")
    args = parser.parse_args(argv)

    s3 = client(args.endpoint)
    if args.command == "wait":
        wait(s3)
    elif args.command == "mb":
        for uri in args.uris:
            make_bucket(s3, split_uri(uri)[0])
    elif args.command == "put":
        if not args.file.is_file():
            raise SystemExit(f"no such file: {args.file}")
        put(s3, args.uri, args.file)
    else:
        found = keys(s3, args.uri)
        if not found:
            print(f"nothing under {args.uri}", file=sys.stderr)
            return 1
        print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
