import hashlib
import subprocess
from pathlib import Path

import pytest

from vcache.hashing import Digest, StreamHasher, git_blob_sha1, hash_file


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    data = b"hello world\n" * 1000
    p = tmp_path / "f"
    p.write_bytes(data)
    out = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True)
    assert git_blob_sha1(data) == out.stdout.strip()
    assert hash_file(p, "gitsha1") == Digest("gitsha1", out.stdout.strip())


def test_stream_hasher_equals_one_shot(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4099
    h = StreamHasher("sha256", len(data))
    for i in range(0, len(data), 777):
        h.update(memoryview(data)[i : i + 777])
    assert h.digest().hexdigest == hashlib.sha256(data).hexdigest()
    assert h.fed == len(data)


def test_digest_parse_and_validate() -> None:
    d = Digest.parse("sha256:" + "ab" * 32)
    assert d.algorithm == "sha256" and str(d) == "sha256:" + "ab" * 32
    assert Digest.from_etag("a" * 40).algorithm == "gitsha1"
    with pytest.raises(ValueError):
        Digest("sha256", "xyz")
    with pytest.raises(ValueError):
        Digest.parse("md5:" + "a" * 32)
