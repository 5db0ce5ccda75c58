"""Hub client pieces: path safety, listing parsing, origins, error mapping, answers that are not the API's,
and how the client gives up on a server that refuses or never answers."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import pytest

from transfer_helpers import closed_endpoint, silent_server
from vcache.errors import (
    AuthError,
    EntryNotFound,
    GatedRepo,
    HubError,
    RepoNotFound,
    RevisionNotFound,
    TransferError,
    UnsafePath,
    UsageError,
)
from vcache.hub import (
    HubClient,
    error_from_response,
    parse_entries,
    resolve_url,
    same_origin,
    validate_repo_id,
    validate_repo_path,
    validate_revision,
)
from vcache.retry import FakeClock, ProgressWatch, RetryPolicy
from vcache.testing.hub import Fault

SHA1 = "a" * 40
SHA256 = "b" * 64


@pytest.mark.parametrize(
    "path",
    [
        "../evil",
        "a/../../etc/passwd",
        "/etc/passwd",
        "a\\b",
        "a\0b",
        "",
        "a//b",
        "./a",
        "C:evil",
        "a/.",
        "x\n",
        "bad\udcffname",  # JSON can carry a lone surrogate: no file name and no URL can hold it
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath) as err:
        validate_repo_path(path)
    assert "refusing" in str(err.value)


@pytest.mark.parametrize(
    "path", ["config.json", "sub/dir/notes.txt", "a..b/c", ".gitattributes", "name with space"]
)
def test_safe_paths_pass(path: str) -> None:
    assert validate_repo_path(path) == path


BAD_REVISIONS = [
    "../../../../../../victim.txt",
    "..",
    ".",
    "a/../b",
    "a..b",
    "/main",
    "main/",
    "a//b",
    ".hidden",
    "a/.hidden",
    "main.lock",
    "a.lock/b",
    "main.",
    "@",
    "a@{1}",
    "a b",
    "a\tb",
    "a\x00b",
    "a\x7fb",
    "a~1",
    "a^2",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "",
    "bad\udcffbytes",
]
GOOD_REVISIONS = [
    "main",
    "v1.0",
    "refs/pr/1",
    "refs/convert/parquet",
    "a" * 40,
    "feature/x-y_z",
    "r@1",
    "ünï",
]


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_revision_names_follow_git_refname_rules(revision: str) -> None:
    with pytest.raises(UsageError) as err:
        validate_revision(revision)
    assert "--revision" in str(err.value) and "branch, tag" in str(err.value)


@pytest.mark.parametrize("revision", GOOD_REVISIONS)
def test_valid_revision_names_pass(revision: str) -> None:
    assert validate_revision(revision) == revision


BAD_REPO_IDS = [
    "",
    "a/b/c",
    "/abs",
    "org/..",
    "acme/model\t",
    "acme/model\n",
    "../x",
    "a--b/c",
    "x/.git",
    "é/x",
]


@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_repo_ids_follow_huggingface_hubs_rules(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate_repo_id

    with pytest.raises(HFValidationError):  # huggingface_hub refuses each one too
        hf_validate_repo_id(repo_id)
    with pytest.raises(UsageError) as err:
        validate_repo_id(repo_id)
    assert repr(repo_id) in str(err.value) and "org/name" in str(err.value)


@pytest.mark.parametrize("repo_id", ["gpt2", "acme/tiny-llama", "org/name.with-dots_and-dashes", "A1/b"])
def test_valid_repo_ids_pass(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


def test_parse_entries_lfs_regular_and_directories() -> None:
    payload = [
        {"type": "directory", "oid": SHA1, "size": 0, "path": "sub"},
        {"type": "file", "oid": SHA1, "size": 3, "path": "sub/a.txt"},
        {
            "type": "file",
            "oid": SHA1,
            "size": 10,
            "path": "m.safetensors",
            "lfs": {"oid": SHA256, "size": 10, "pointerSize": 130},
        },
    ]
    files = list(parse_entries(payload, repo_id="x/y"))
    assert [f.path for f in files] == ["sub/a.txt", "m.safetensors"]
    assert files[0].etag == SHA1 and files[0].digest.algorithm == "gitsha1"
    assert files[1].etag == SHA256 and files[1].digest.algorithm == "sha256" and files[1].is_lfs


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "file", "oid": SHA1, "size": -1, "path": "a"},
        {"type": "file", "oid": SHA1, "size": True, "path": "a"},
        {"type": "file", "oid": "zz", "size": 1, "path": "a"},
        {"type": "file", "oid": SHA1, "size": 1, "path": "a", "lfs": {"oid": "short", "size": 1}},
        {"type": "file", "oid": SHA1, "size": 1, "path": "a", "lfs": {"oid": SHA256, "size": 2}},
    ],
)
def test_parse_entries_rejects_malformed(entry: dict[str, object]) -> None:
    with pytest.raises(HubError):
        list(parse_entries([entry], repo_id="x/y"))


def test_parse_entries_rejects_hostile_path() -> None:
    with pytest.raises(UnsafePath):
        list(parse_entries([{"type": "file", "oid": SHA1, "size": 1, "path": "../../x"}], repo_id="x/y"))


def test_same_origin_rules() -> None:
    assert same_origin("http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b?x")
    assert same_origin("https://hf.co/a", "https://HF.co:443/b")
    assert not same_origin("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/a")
    assert not same_origin("https://h/a", "http://h/a")
    assert not same_origin("http://localhost:1/a", "http://127.0.0.1:1/a")


def test_resolve_url_quotes_and_prefixes() -> None:
    assert (
        resolve_url("http://h", "o/n", SHA1, "sub dir/a b.txt")
        == f"http://h/o/n/resolve/{SHA1}/sub%20dir/a%20b.txt"
    )
    assert resolve_url("http://h", "o/n", SHA1, "a", "dataset").startswith("http://h/datasets/o/n/resolve/")


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [
        (404, "RepoNotFound", RepoNotFound),
        (401, "RepoNotFound", RepoNotFound),
        (404, "RevisionNotFound", RevisionNotFound),
        (404, "EntryNotFound", EntryNotFound),
        (403, "GatedRepo", GatedRepo),
        (401, "", AuthError),
        (404, "", EntryNotFound),
    ],
)
def test_error_mapping(status: int, code: str, exc: type[Exception]) -> None:
    resp = httpx2.Response(status, headers={"x-error-code": code} if code else {})
    err = error_from_response(resp, repo_id="o/n", what="x")
    assert isinstance(err, exc) and isinstance(err, OSError)


@pytest.mark.parametrize("status", [200, 206, 408, 429, 500, 503])
def test_retryable_and_success_are_not_errors(status: int) -> None:
    assert error_from_response(httpx2.Response(status), repo_id="o/n", what="x") is None


# ---- answers that are not the API's JSON ----------------------------------------------------------------

NOT_THE_API = [
    pytest.param(Fault.html_page(on="api"), "text/html", id="login-page"),
    pytest.param(Fault.api_body(b"[" * 990 + b"]" * 990), "application/json", id="nested-too-deep"),
    pytest.param(Fault.api_body(b'"a string"'), "application/json", id="wrong-shape"),
    pytest.param(Fault.api_body(b'{"sha": ' + b"1" * 5000 + b"}"), "application/json", id="huge-number"),
]


@pytest.mark.parametrize(("fault", "content_type"), NOT_THE_API)
@pytest.mark.parametrize("call", ["resolve_commit", "list_files", "paths_info"])
def test_an_answer_that_is_not_the_api_json_is_a_hub_error_naming_url_and_type(
    hub: Any, call: str, fault: Fault, content_type: str
) -> None:
    repo = "acme/tiny-llama"
    with HubClient(hub.endpoint, None) as client:
        commit = client.resolve_commit(repo, None)
        hub.fault(repo, "*", fault)
        with pytest.raises(HubError) as err:
            if call == "resolve_commit":
                client.resolve_commit(repo, None)
            elif call == "list_files":
                client.list_files(repo, commit)
            else:
                client.paths_info(repo, commit, ["config.json"])
    message = str(err.value)
    assert f"{hub.endpoint}/api/models/{repo}/" in message and content_type in message
    assert err.value.context["repo_id"] == repo


# -- giving up on a server that says nothing ------------------------------------------------------------------


def test_a_refusing_endpoint_is_given_up_on_after_the_budget_not_the_retry_count() -> None:
    """The budget ends it, in fake time, however many retries the policy would still allow."""
    clock = FakeClock()
    lines: list[str] = []
    watch = ProgressWatch(10.0, clock=clock, notify=lines.append)
    endpoint = closed_endpoint()
    policy = RetryPolicy(total=100, rand=lambda: 0.5)
    with (
        HubClient(endpoint, None, clock=clock, watch=watch, policy=policy) as hub,
        pytest.raises(TransferError) as info,
    ):
        hub.resolve_commit("acme/m", None)
    assert "resolving acme/m@main: gave up after 10 s without progress from 127.0.0.1:" in str(info.value)
    assert "VCACHE_GIVE_UP_SECONDS" in str(info.value)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 2.5]  # the last backoff is cut to the budget
    assert lines and all(ln.startswith(f"waiting for {endpoint.removeprefix('http://')}") for ln in lines)
    assert "giving up in" in lines[0] and "failed attempts" in lines[0]


def test_fail_fast_and_the_retry_after_it_share_one_budget() -> None:
    clock = FakeClock()
    watch = ProgressWatch(10.0, clock=clock)
    with HubClient(closed_endpoint(), None, clock=clock, watch=watch) as hub:
        with pytest.raises(TransferError):  # HubUnreachable: the caller may answer from its cache
            hub.resolve_commit("acme/m", None, fail_fast=True)
        clock.advance(10.0)  # the caller took its time before asking again: the silence goes on
        with pytest.raises(TransferError, match="gave up after 10 s"):
            hub.resolve_commit("acme/m", None)
    assert clock.sleeps == []


def test_an_api_that_accepts_and_never_answers_is_given_up_on_within_the_budget() -> None:
    """The read timeout (30 s) is cut to the budget: one hanging request cannot outlast the pull's patience."""
    lines: list[str] = []
    with (
        silent_server() as srv,
        HubClient(srv.endpoint, None, watch=ProgressWatch(1.0, notify=lines.append)) as hub,
    ):
        started = time.monotonic()
        with pytest.raises(TransferError, match=r"without progress from 127\.0\.0\.1.*ReadTimeout"):
            hub.list_files("acme/m", "a" * 40)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.0
    assert len(srv.requests) == 1
    assert lines and "listing acme/m@aaaaaaaaaaaa" in lines[0]
