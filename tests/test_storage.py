"""Storage URLs: parsed without I/O, probed up front, and never turned into a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmmo.errors import SpecError, StudyError
from mmmo.storage import check_storage, parse_storage
from mmmo.study import StudyStore


@pytest.mark.parametrize(("url", "normalised", "local"), [
    ("./studies/", "./studies", True),
    ("/srv/studies", "/srv/studies", True),
    ("file:///srv/studies/", "file:///srv/studies", True),
    ("file:///", "file:///", True),
    ("s3://my-bucket/prefix/", "s3://my-bucket/prefix", False),
    ("s3://my-bucket", "s3://my-bucket", False),
    ("memory://studies", "memory://studies", False),
    ("hdfs:///user/studies", "hdfs:///user/studies", False),
    ("ftp://host:2121/studies", "ftp://host:2121/studies", False),
])
def test_well_formed_urls_are_normalised(url: str, normalised: str, local: bool) -> None:
    parsed = parse_storage(url)
    assert parsed.url == normalised and parsed.local is local
    assert parsed.join("demo") == f"{normalised.rstrip('/')}/demo"


@pytest.mark.parametrize("url", ["", "s3://", "s3:///x", "gs://", "http://", "https://:80/x",
                                 "memory://", "memory:///", "file://", "s3:bucket/x",
                                 "simplecache::s3://bkt/x", "cached://x", "s3://ab",
                                 "s3://Upper/x", "nope://x"])
def test_malformed_urls_are_refused_without_io(url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        parse_storage(url)
    assert info.value.field == "storage" and info.value.fix
    with pytest.raises((SpecError, StudyError)):
        StudyStore(url, "demo")  # the store parses it the same way: no folder 's3:' here
    assert list(tmp_path.iterdir()) == []


def test_a_writable_store_passes_and_keeps_nothing_of_the_probe(tmp_path: Path,
                                                                s3_bucket: str) -> None:
    import s3fs

    check_storage(str(tmp_path / "new" / "studies"))
    assert list(tmp_path.iterdir()) == []  # the probe file went, the folder was not made
    check_storage("memory://mmmo-probe-test/studies")
    check_storage(f"{s3_bucket}/studies")
    fs = s3fs.S3FileSystem()
    assert fs.ls(s3_bucket, refresh=True) == []  # the probe object went too
