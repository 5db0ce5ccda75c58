import hashlib
import subprocess
from pathlib import Path

import pytest

from vcache.hashing import Digest, StreamHasher, git_blob_sha1, hash_file, sha256_of_git_file


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


def test_sha256_of_a_git_file_checks_its_blob_id_on_the_same_read(tmp_path: Path) -> None:
    data = b'{"hidden_size": 64}\n' * 10
    p = tmp_path / "config.json"
    p.write_bytes(data)
    blob_id = Digest("gitsha1", git_blob_sha1(data))
    assert sha256_of_git_file(p, blob_id) == Digest("sha256", hashlib.sha256(data).hexdigest())
    p.write_bytes(data.replace(b"64", b"65"))  # changed since it was verified: no sha256 is vouched for
    assert sha256_of_git_file(p, blob_id) is None
