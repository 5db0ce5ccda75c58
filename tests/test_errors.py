"""Error context is typed attributes: each class takes the context it declares, and nothing else."""

from __future__ import annotations

import errno
import pickle

import pytest

from vcache.errors import (
    CacheNotWritable,
    DiskFull,
    HubError,
    LockTimeout,
    RateLimited,
    RetriesExhausted,
    TransferError,
    UsageError,
    VerificationFailed,
)
from vcache.report import fail
from vcache.retry import RetryEvent


def test_context_is_attributes_and_the_given_part_is_kept_in_context() -> None:
    err = DiskFull("no space for w.bin", path="w.bin", errno=errno.ENOSPC, needed=10, free=3)
    assert (err.path, err.errno, err.needed, err.free, err.repo_id) == ("w.bin", errno.ENOSPC, 10, 3, None)
    assert err.context == {"path": "w.bin", "errno": errno.ENOSPC, "needed": 10, "free": 3}
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DiskFull and str(back) == str(err) and back.context == err.context
    assert (back.needed, back.free) == (10, 3)

    history = (RetryEvent("HTTP 503", 503), RetryEvent("HTTP 429", 429, 2.0))
    for cls in (RetriesExhausted, RateLimited):
        gave_up = cls("gave up", path="w.bin", status=429, reason="HTTP 429", history=history)
        assert (gave_up.status, gave_up.reason, gave_up.history) == (429, "HTTP 429", history)
    assert RetriesExhausted("gave up").history == ()  # read without a guard

    hub = HubError("not JSON", repo_id="acme/x", url="http://h/api", status=200, content_type="text/html")
    assert (hub.url, hub.status, hub.content_type) == ("http://h/api", 200, "text/html")
    assert LockTimeout("waited", path="/c/.locks/x.lock", holder="pid 7").holder == "pid 7"
    assert CacheNotWritable("read-only", repo_id="acme/x", missing=["a", "b"]).missing == ["a", "b"]
    assert UsageError("bad", revision="v1").revision == "v1"
    finding = fail("tensor.nan", "NaN in w")
    refused = VerificationFailed("refused", [finding], repo_id="acme/x")
    assert refused.findings == (finding,) and refused.report is None


def test_a_context_name_the_class_does_not_declare_is_refused() -> None:
    with pytest.raises(TypeError):
        TransferError("x", pth="w.bin")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LockTimeout("x", status=1)  # type: ignore[call-arg]
