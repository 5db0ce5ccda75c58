"""``vcache.snapshot_download`` / ``vcache.hf_hub_download`` raise what huggingface_hub's own functions raise.

Code written for huggingface_hub catches its exceptions (``except RepositoryNotFoundError:``). Each case runs
twice against the same local Hub: once through huggingface_hub, which tells which class it raises, then
through vcache's drop-in, whose error must be caught by an ``except`` clause naming that class and still be
vcache's own (its tree and its message).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors

import vcache
from vcache.errors import HubError, IncompleteSnapshot, OfflineError, VcacheError
from vcache.testing.hub import HubServer, Repo

PUBLIC, PRIVATE, GATED, MISSING = "acme/public", "acme/private", "acme/gated", "acme/does-not-exist"
FILES = {"config.json": b'{"model_type": "llama"}\n', "weights.bin": b"\x01" * 4096}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    repos = [Repo(PUBLIC), Repo(PRIVATE, private=True), Repo(GATED, gated=True)]
    for repo in repos:
        repo.commit(FILES)
    with HubServer(repos) as server:
        yield server


@dataclass(frozen=True)
class Case:
    """One request for something that is not there, made of either library's function of that name."""

    name: str
    function: str  # "snapshot_download" or "hf_hub_download"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    offline: bool = False  # asked with local_files_only (or, for vcache, also with HF_HUB_OFFLINE=1)
    cached: tuple[str, ...] | None = None  # files of PUBLIC pulled (online) into the cache first


CASES = [
    Case("missing repo", "snapshot_download", (MISSING,), {}),
    Case("missing repo, one file", "hf_hub_download", (MISSING, "config.json"), {}),
    Case("private repo without a token", "snapshot_download", (PRIVATE,), {}),
    Case("missing revision", "snapshot_download", (PUBLIC,), {"revision": "no-such-branch"}),
    Case("missing revision, one file", "hf_hub_download", (PUBLIC, "config.json"), {"revision": "nope"}),
    Case("missing file", "hf_hub_download", (PUBLIC, "no-such-file.txt"), {}),
    Case("gated repo", "snapshot_download", (GATED,), {}),
    Case("gated repo, one file", "hf_hub_download", (GATED, "config.json"), {}),
    Case("offline, repo not cached", "snapshot_download", (PUBLIC,), {}, offline=True),
    Case("offline, file not cached", "hf_hub_download", (PUBLIC, "config.json"), {}, offline=True),
    Case(
        "offline, one file of a cached repo missing",
        "hf_hub_download",
        (PUBLIC, "weights.bin"),
        {},
        offline=True,
        cached=("config.json",),
    ),
    Case(
        "offline, snapshot cached in part",
        "snapshot_download",
        (PUBLIC,),
        {},
        offline=True,
        cached=("config.json",),
    ),
]


def _raised(call: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def _prepare(case: Case, hub: HubServer, cache: Path) -> None:
    if case.cached is not None:
        vcache.snapshot_download(
            PUBLIC, allow_patterns=list(case.cached), endpoint=hub.endpoint, cache_dir=cache
        )


RUNS = [(c, how) for c in CASES for how in (("local_files_only", "HF_HUB_OFFLINE") if c.offline else ("",))]


@pytest.mark.parametrize(
    ("case", "how"), RUNS, ids=[f"{c.name}{' by ' + how if how else ''}".replace(" ", "-") for c, how in RUNS]
)
def test_dropin_raises_what_huggingface_hub_raises(
    case: Case, how: str, hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = {"local_files_only": True} if case.offline else {}
    common = {"endpoint": hub.endpoint, "token": False} | case.kwargs

    # huggingface_hub's own answer, from a cache prepared the same way (vcache writes a standard HF cache)
    hf_cache = tmp_path / "hf"
    _prepare(case, hub, hf_cache)
    hf_fn = getattr(huggingface_hub, case.function)
    expected = _raised(lambda: hf_fn(*case.args, cache_dir=hf_cache, **common, **offline))
    hf_class = type(expected)
    assert hf_class.__module__.startswith("huggingface_hub"), repr(expected)

    cache = tmp_path / "vcache"
    _prepare(case, hub, cache)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        offline = {}
    vc_fn = getattr(vcache, case.function)
    with pytest.raises(hf_class) as caught:  # an `except <that class>:` written for huggingface_hub
        vc_fn(*case.args, cache_dir=cache, **common, **offline)
    exc = caught.value
    # still vcache's own error, tree and message: Hub refusals are HubError, offline misses their own classes
    assert isinstance(exc, VcacheError) and str(exc) == exc.message, repr(exc)
    expected_vcache = (OfflineError, IncompleteSnapshot) if case.offline else (HubError,)
    assert isinstance(exc, expected_vcache), repr(exc)
    assert case.args[0] in str(exc), str(exc)  # names the repo


def test_hub_errors_stand_alone_without_an_http_response() -> None:
    """Built by vcache (no httpx response at hand), they still behave as both libraries' errors."""
    for cls, hf_class in [
        (vcache.RepoNotFound, hf_errors.RepositoryNotFoundError),
        (vcache.RevisionNotFound, hf_errors.RevisionNotFoundError),
        (vcache.EntryNotFound, hf_errors.RemoteEntryNotFoundError),
        (vcache.GatedRepo, hf_errors.GatedRepoError),
        (vcache.OfflineError, hf_errors.LocalEntryNotFoundError),
        (vcache.IncompleteSnapshot, hf_errors.LocalEntryNotFoundError),
    ]:
        exc = cls("what happened; what to do next", repo_id="acme/x")
        assert isinstance(exc, hf_class) and isinstance(exc, VcacheError) and isinstance(exc, OSError)
        assert str(exc) == "what happened; what to do next" and exc.repo_id == "acme/x"
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc) and back.repo_id == "acme/x"
        if isinstance(exc, hf_errors.HfHubHTTPError):
            assert exc.response is None and exc.server_message is None and exc.request_id is None
            with pytest.raises(RuntimeError):  # as for any httpx error raised without a request
                _ = exc.request
            exc.append_to_message("\nmore context")
            assert str(exc) == exc.message == "what happened; what to do next\nmore context"


@pytest.mark.parametrize("function", ["snapshot_download", "hf_hub_download"])
@pytest.mark.parametrize("repo_id", ["a/b/c", "org/..", "/abs", "acme/tab\t"])
def test_an_invalid_repo_id_is_what_huggingface_hub_raises_and_a_usage_error(
    function: str, repo_id: str, hub: HubServer, tmp_path: Path
) -> None:
    """huggingface_hub refuses a malformed repo id with ``HFValidationError`` before any request; vcache's
    drop-in refuses it as a :class:`~vcache.errors.UsageError` that is also that class."""
    args = (repo_id, "config.json") if function == "hf_hub_download" else (repo_id,)
    common = {"endpoint": hub.endpoint, "token": False}
    expected = _raised(lambda: getattr(huggingface_hub, function)(*args, cache_dir=tmp_path / "hf", **common))
    assert isinstance(expected, hf_errors.HFValidationError), repr(expected)
    with pytest.raises(hf_errors.HFValidationError) as caught:
        getattr(vcache, function)(*args, cache_dir=tmp_path / "vcache", **common)
    assert isinstance(caught.value, vcache.UsageError) and repr(repo_id) in str(caught.value)
    assert not (tmp_path / "vcache").exists()
