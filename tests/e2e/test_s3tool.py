"""The e2e script's S3 helper, against a real SeaweedFS (the s3_server fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import s3tool
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.integration


def test_put_creates_the_bucket_and_ls_finds_the_object(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    bucket = f"e2e-{tmp_path.name[-8:].lower().replace('_', '-')}"
    endpoint = s3_server.endpoint
    assert s3tool.main(["--endpoint", endpoint, "wait"]) == 0
    assert s3tool.main(["--endpoint", endpoint, "put", f"s3://{bucket}/data/train.jsonl", str(data)]) == 0
    assert s3tool.main(["--endpoint", endpoint, "ls", f"s3://{bucket}/data/"]) == 0
    assert "data/train.jsonl" in capsys.readouterr().out
    body = s3_server.client().get_object(Bucket=bucket, Key="data/train.jsonl")["Body"].read()
    assert body == data.read_bytes()


def test_mb_is_idempotent_and_ls_of_an_empty_prefix_fails(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = f"mb-{tmp_path.name[-8:].lower().replace('_', '-')}"
    for _ in range(2):
        assert (
            s3tool.main(["--endpoint", s3_server.endpoint, "mb", f"s3://{bucket}", f"s3://{bucket}-2"]) == 0
        )
    s3_server.client().head_bucket(Bucket=bucket)
    s3_server.client().head_bucket(Bucket=f"{bucket}-2")
    assert s3tool.main(["--endpoint", s3_server.endpoint, "ls", f"s3://{bucket}/checkpoints/"]) == 1


def test_bad_uri_and_missing_file_are_explained(s3_server: S3Server, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not an s3:// URI"):
        s3tool.main(["--endpoint", s3_server.endpoint, "ls", "models/tiny-cpu/"])
    with pytest.raises(SystemExit, match="no such file"):
        s3tool.main(["--endpoint", s3_server.endpoint, "put", "s3://b/k", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="name the object's key"):
        s3tool.main(["--endpoint", s3_server.endpoint, "put", "s3://b/", __file__])
