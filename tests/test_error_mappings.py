"""One mapping each: Hub refusals (``hub.refusal_error``), disk errors (``cache.translate_os_error``) and
exhausted retries (``retry.exhausted``), whichever part of vcache meets them."""

from __future__ import annotations

import errno
from pathlib import Path

import httpx2
import pytest

from vcache.cache import translate_os_error
from vcache.errors import (
    AuthError,
    CacheNotWritable,
    DiskFull,
    EntryNotFound,
    GatedRepo,
    RateLimited,
    RetriesExhausted,
)
from vcache.hub import error_from_response, refusal_detail, refusal_error
from vcache.retry import RetryPolicy, exhausted


def test_a_refusal_reads_the_same_from_a_metadata_call_and_a_download() -> None:
    headers = {"x-error-code": "GatedRepo", "x-error-message": "Access to model o/n is restricted\x1b[31m"}
    meta = error_from_response(httpx2.Response(403, headers=headers), repo_id="o/n", what="listing o/n@main")
    detail = refusal_detail(403, headers["x-error-code"], headers["x-error-message"])
    download = refusal_error(403, "GatedRepo", detail, where="w.bin at 0123456789ab", path="w.bin")
    assert isinstance(meta, GatedRepo) and isinstance(download, GatedRepo)
    assert str(meta).removeprefix("listing o/n@main") == str(download).removeprefix("w.bin at 0123456789ab")
    assert "HTTP 403 GatedRepo: Access to model o/n is restricted" in str(meta) and "\x1b" not in str(meta)
    assert meta.status == download.status == 403 and download.path == "w.bin"  # type: ignore[attr-defined]


def test_the_error_body_speaks_when_the_headers_do_not() -> None:
    response = httpx2.Response(401, content=b'{"error": "Invalid credentials in Authorization header"}')
    err = error_from_response(response, repo_id="o/n", what="resolving o/n@main")
    assert isinstance(err, AuthError) and "Invalid credentials in Authorization header" in str(err)


@pytest.mark.parametrize(("status", "kind"), [(404, EntryNotFound), (410, EntryNotFound), (403, AuthError)])
def test_refusals_without_a_code_map_by_status(status: int, kind: type[Exception]) -> None:
    assert isinstance(refusal_error(status, None, f"HTTP {status}", where="x"), kind)


def test_disk_errors_map_to_vcache_errors_with_their_context(tmp_path: Path) -> None:
    full = translate_os_error(
        OSError(errno.ENOSPC, "No space left on device"), "w.bin", where=tmp_path, path="w"
    )
    assert isinstance(full, DiskFull) and "bytes free" in str(full) and full.errno == errno.ENOSPC
    assert full.path == "w"  # type: ignore[attr-defined]
    denied = translate_os_error(PermissionError(errno.EACCES, "Permission denied", "/c/x"), "publishing x")
    assert isinstance(denied, CacheNotWritable) and "Permission denied: /c/x" in str(denied)
    other = OSError(errno.EIO, "Input/output error")
    assert translate_os_error(other, "x") is other


@pytest.mark.parametrize(("status", "kind"), [(429, RateLimited), (503, RetriesExhausted)])
def test_exhausted_retries_have_one_wording(status: int, kind: type[Exception]) -> None:
    policy = RetryPolicy(total=1).increment(status=status)
    with pytest.raises(RetriesExhausted) as info:
        policy.increment(status=status)
    err = exhausted("w.bin", info.value, server="hub.example:443", path="w.bin")
    assert type(err) is kind
    assert str(err).startswith(f"w.bin: gave up after 2 failed attempts in a row; last cause: HTTP {status}")
    assert "hub.example:443" in str(err) and err.path == "w.bin" and len(err.history) == 2  # type: ignore[attr-defined]
