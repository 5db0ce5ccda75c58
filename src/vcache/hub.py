"""The Hub API as vcache needs it: revision -> commit, the file listing with sizes and digests, errors.

Everything the server says is untrusted input: an answer that is not the API's JSON is a :class:`HubError`
naming the URL and content type, paths are validated (:func:`validate_repo_path`) before any of them can
name a file on disk, sizes and digests are type-checked, and refusals are mapped from ``X-Error-Code`` and
status to vcache's own error tree by :func:`refusal_error`, the one mapping (file downloads use it too).
The caller's repo id and revision are checked too (:func:`validate_repo_id`, :func:`validate_revision`),
before any request. This module never writes to disk and never moves file
bodies (that is ``transfer``); it only asks the API.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

from vcache._version import __version__
from vcache.connections import Origin as Origin
from vcache.connections import Pool, PoolTransport
from vcache.connections import origin_of as origin_of
from vcache.connections import redact_url as redact_url
from vcache.connections import server_text as server_text
from vcache.errors import (
    AuthError,
    EntryNotFound,
    GatedRepo,
    HubError,
    InvalidRepoId,
    RepoNotFound,
    RetriesExhausted,
    RevisionNotFound,
    TransferError,
    UnsafePath,
    UsageError,
)
from vcache.hashing import Digest
from vcache.retry import (
    SYSTEM_CLOCK,
    Clock,
    ProgressWatch,
    RetryPolicy,
    describe_failure,
    exhausted,
    parse_retry_after,
)

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
#: The largest Hub API answer read (a tree listing page of 1,000 entries is well under 1 MiB); a longer one is
#: a HubError.
MAX_API_ANSWER = 64 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_REFNAME_BAD_CHAR = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, as the Hub lists it."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """The HF blob name: the LFS sha256, else the git blob id."""
        return self.lfs_sha256 or self.blob_id

    @property
    def digest(self) -> Digest:
        """What the bytes must hash to."""
        if self.lfs_sha256:
            return Digest("sha256", self.lfs_sha256)
        return Digest("gitsha1", self.blob_id)

    @property
    def is_lfs(self) -> bool:
        """True for LFS files (digest is a sha256)."""
        return self.lfs_sha256 is not None


def validate_repo_path(path: str) -> str:
    """Return ``path`` if it is a safe repo-relative file path, else raise :class:`UnsafePath`.

    Refused: empty paths, NUL or other control characters, backslashes, a leading ``/``, a Windows drive,
    text that is not valid UTF-8, ``.`` or ``..`` segments, and empty segments. The server is not trusted to
    send only sane names.
    """
    reason = None
    if not path:
        reason = "it is empty"
    elif any(ord(c) < 0x20 or c == "\x7f" for c in path):
        reason = "it contains a NUL or control character"
    elif "\\" in path:
        reason = "it contains a backslash"
    elif path.startswith("/"):
        reason = "it is absolute"
    elif _WINDOWS_DRIVE.match(path):
        reason = "it starts with a drive letter"
    elif not _is_utf8(path):
        reason = "it is not valid UTF-8"
    else:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            reason = "it has an empty, '.' or '..' segment"
    if reason:
        raise UnsafePath(
            f"refusing server-supplied path {path!r}: {reason}. Nothing was written; "
            "the repo listing is malformed or hostile.",
            path=path,
            reason=reason,
        )
    return path


def validate_revision(revision: str) -> str:
    """Return ``revision`` if git would accept it as a ref name, else raise :class:`UsageError`.

    The rules of ``git check-ref-format --allow-onelevel``: no ``..``, no ``/``-separated component that
    starts with ``.`` or ends with ``.lock``, no control character, space, ``~^:?*[\\``, no ``@{``, not
    ``@`` alone, no leading or trailing ``/`` and no ``//``, no trailing ``.``. Commit ids and
    ``refs/pr/N`` pass. The name becomes ``refs/<revision>`` in the cache, so nothing else may reach it.
    """
    reason = None
    if not revision:
        reason = "it is empty"
    elif _REFNAME_BAD_CHAR.search(revision):
        reason = "it contains a control character, a space or one of ~^:?*[\\"
    elif ".." in revision:
        reason = "it contains '..'"
    elif "@{" in revision or revision == "@":
        reason = "it is '@' or contains '@{'"
    elif revision.startswith("/") or revision.endswith("/") or "//" in revision:
        reason = "it starts or ends with '/' or contains '//'"
    elif revision.endswith("."):
        reason = "it ends with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")):
        reason = "a '/'-separated part starts with '.' or ends with '.lock'"
    elif not _is_utf8(revision):
        reason = "it is not valid UTF-8"
    if reason:
        raise UsageError(
            f"invalid revision {revision!r} (--revision): {reason}; give a branch, tag, commit id or "
            "refs/pr/N as git names them",
            revision=revision,
        )
    return revision


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if huggingface_hub accepts it (``name`` or ``org/name``), else raise
    :class:`~vcache.errors.InvalidRepoId` (a ``UsageError`` that is also huggingface_hub's ``HFValidationError``).

    The rules are huggingface_hub's own (``validate_repo_id``): one or two ``/``-separated parts of ASCII
    letters, digits, ``-``, ``_`` and ``.``, not starting or ending with ``-`` or ``.``, no ``--`` or ``..``,
    not ending in ``.git``, at most 96 characters each.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id as hf_validate_repo_id

    valid = isinstance(repo_id, str)
    if valid:
        try:
            hf_validate_repo_id(repo_id)
        except HFValidationError:
            valid = False
    if not valid:
        raise InvalidRepoId(
            f"invalid repo id {repo_id!r}: expected 'name' or 'org/name' made of ASCII letters, digits, "
            "'-', '_' and '.' (no '--' or '..', no leading or trailing '-' or '.', no trailing '.git')",
            repo_id=repo_id,
        )
    return repo_id


def _is_utf8(name: str) -> bool:
    # A lone surrogate (from JSON, or from undecodable bytes in argv) fits no URL and no file name.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repo_url_prefix(repo_type: str) -> str:
    """The resolve-URL prefix: ``""`` for models, ``datasets/`` and ``spaces/`` otherwise."""
    return "" if repo_type == "model" else f"{repo_type}s/"


def resolve_url(endpoint: str, repo_id: str, commit: str, path: str, repo_type: str = "model") -> str:
    """The download URL of ``path`` pinned to ``commit`` (never a branch, so the bytes cannot move)."""
    return f"{endpoint}/{repo_url_prefix(repo_type)}{repo_id}/resolve/{commit}/{quote(path)}"


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, as messages name the server (no credentials, no path)."""
    return urlsplit(url).netloc.rpartition("@")[2] or url


def same_origin(a: str, b: str) -> bool:
    """True when two URLs share scheme, host and port (the only place a token may go)."""
    try:
        return origin_of(a) == origin_of(b)
    except ValueError:
        return False


def _error_from_body(body: bytes) -> str:
    try:
        doc = json.loads(body[:4096])
    except (ValueError, RecursionError):  # not JSON, or nested too deeply for Python's parser
        return ""
    return (
        server_text(doc.get("error"), 200)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str)
        else ""
    )


def refusal_detail(status: int, code: str | None, message: str | None, body: bytes = b"") -> str:
    """The server's own words about an error answer, safe for a message: ``HTTP 403 GatedRepo: <message>``.

    ``code`` and ``message`` are the ``X-Error-Code`` and ``X-Error-Message`` headers; without a message,
    the ``"error"`` string of a JSON ``body`` stands in.
    """
    code = server_text(code, 60)
    message = server_text(message, 200)
    if not message and body:
        message = _error_from_body(body)
    return f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")


def refusal_error(
    status: int, code: str | None, detail: str, *, where: str, **context: Any
) -> HubError | None:
    """The error for the Hub's answer ``status`` with ``X-Error-Code`` ``code``: the one mapping of Hub refusals.

    ``None`` when the answer is no error, or one another attempt may cure (408, 429, 5xx without a code
    that says otherwise). ``where`` opens the message (what was being done, or which file); ``detail`` is
    the server's own words (:func:`refusal_detail`); ``status`` and ``context`` go on the error. The
    metadata calls (:func:`error_from_response`) and the file downloads (``vcache.transfer``) both map
    refusals here.
    """
    if status < 400:
        return None
    code = server_text(code, 60)
    if code == "GatedRepo":
        return GatedRepo(
            f"{where}: the repository is gated ({detail}); request access on the Hub, then pass a token "
            "that has it",
            status=status,
            **context,
        )
    if code == "RepoNotFound":
        return RepoNotFound(
            f"{where}: repository not found or not visible with this token ({detail}); check the name "
            "and HF_TOKEN",
            status=status,
            **context,
        )
    if code == "RevisionNotFound":
        return RevisionNotFound(
            f"{where}: revision not found ({detail}); check --revision", status=status, **context
        )
    if code == "EntryNotFound" or status in (404, 410):
        return EntryNotFound(f"{where}: file not found ({detail})", status=status, **context)
    if status in (401, 403):
        return AuthError(
            f"{where}: access refused ({detail}); check the token (HF_TOKEN, --token or `hf auth login`)",
            status=status,
            **context,
        )
    if status in (408, 429) or status >= 500:
        return None
    return HubError(f"{where}: the server answered {detail}", status=status, **context)


def error_from_response(response: httpx2.Response, *, repo_id: str, what: str) -> HubError | None:
    """Map an error response to vcache's error tree (None when it is retryable or not an error).

    The mapping is :func:`refusal_error`'s; ``what`` opens the message.
    """
    status = response.status_code
    if status < 400:
        return None
    try:
        body = response.content
    except httpx2.ResponseNotRead:  # a streamed answer: the headers have to do
        body = b""
    code = response.headers.get("x-error-code")
    detail = refusal_detail(status, code, response.headers.get("x-error-message"), body)
    return refusal_error(status, code, detail, where=what, repo_id=repo_id)


_JSON_KINDS: dict[type, str] = {
    dict: "a JSON object",
    list: "a JSON list",
    str: "a JSON string",
    int: "a JSON number",
    float: "a JSON number",
    bool: "a JSON boolean",
}


def _api_json(
    response: httpx2.Response, *, repo_id: str, what: str, expect: type[dict[str, Any] | list[Any]]
) -> Any:
    """The body of a successful API answer as the JSON ``expect``-ed (an object or a list).

    Anything else (an HTML login page from a proxy, JSON of another shape, JSON nested too deeply for Python's
    parser, a number too long to convert) is a :class:`HubError` naming the URL and the content type.
    """
    try:
        data = json.loads(response.content)
    except RecursionError:
        problem = "JSON nested too deeply to read"
    except ValueError:  # not JSON, not UTF-8, or a number of more than 4300 digits
        problem = "a body that is not JSON"
    else:
        if isinstance(data, expect):
            return data
        problem = f"{_JSON_KINDS.get(type(data), 'JSON null')} where the API sends {_JSON_KINDS[expect]}"
    url = redact_url(str(response.url))
    asked = redact_url(str(response.history[0].url)) if response.history else url
    where = asked if asked == url else f"{asked} (redirected to {url})"
    content_type = response.headers.get("content-type") or "no content type"
    raise HubError(
        f"{what}: {where} answered HTTP {response.status_code} ({content_type}) with {problem}: HF_ENDPOINT "
        "does not point at a Hub, or a proxy or login page answered in its place. Check HF_ENDPOINT and the "
        "network, then run again",
        repo_id=repo_id,
        url=asked,
        status=response.status_code,
        content_type=content_type,
    )


class HubUnreachable(TransferError):
    """The endpoint refused or dropped the connection on a fail-fast call (the caller may use the cache)."""


class HubClient:
    """Metadata calls against one endpoint, with bounded, budgeted retries.

    ``policy`` bounds the retries of one call; ``watch`` (share the pull's, as its transfer does) gives up
    on an endpoint that has said nothing for its budget, and cuts every timeout and backoff to fit it.
    Requests go through a :class:`vcache.connections.Pool`, as downloads do: ``ssl_context`` (default: the
    trust store huggingface_hub uses) for HTTPS, and with ``trust_env`` the ``HTTP(S)_PROXY`` / ``NO_PROXY``
    variables (never for a loopback endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 30.0,
        watch: ProgressWatch | None = None,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = True,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._host = host_of(self.endpoint)
        self._token = token
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._watch = watch or ProgressWatch(clock=clock)
        self._timeout = timeout
        # Uncompressed answers, read up to MAX_API_ANSWER: a hostile or broken server cannot make the client
        # hold an endless answer, or decode a small compressed one into gigabytes.
        headers = {"user-agent": f"vcache/{__version__}; hf_hub-compatible", "accept-encoding": "identity"}
        # vcache's own pool under the httpx API: no httpcore2 import, and a TLS context only for HTTPS.
        pool = Pool(min(timeout, 10.0), ssl_context, trust_env=trust_env, max_idle=4)
        self._client = httpx2.Client(
            transport=PoolTransport(pool, max_body=MAX_API_ANSWER),
            headers=headers,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=True,
        )

    def close(self) -> None:
        """Close the underlying connections."""
        self._client.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _auth_headers(self, url: str) -> dict[str, str]:
        if self._token and same_origin(url, self.endpoint):
            return {"authorization": f"Bearer {self._token}"}
        return {}

    def _request(
        self,
        method: str,
        url: str,
        *,
        repo_id: str,
        what: str,
        data: Mapping[str, Any] | None = None,
        fail_fast: bool = False,
    ) -> httpx2.Response:
        with self._watch.waiting(self._host, what):
            return self._attempts(method, url, repo_id=repo_id, what=what, data=data, fail_fast=fail_fast)

    def _attempts(
        self,
        method: str,
        url: str,
        *,
        repo_id: str,
        what: str,
        data: Mapping[str, Any] | None,
        fail_fast: bool,
    ) -> httpx2.Response:
        policy = self._policy
        watch = self._watch
        while True:
            watch.check(what, repo_id=repo_id)
            status: int | None = None
            retry_after: float | None = None
            error: BaseException | None = None
            # Cut to the give-up budget: a server that accepts and never answers cannot hold one attempt
            # longer than the whole pull may wait.
            limits = httpx2.Timeout(
                watch.timeout(self._timeout), connect=watch.timeout(min(self._timeout, 10.0))
            )
            try:
                response = self._client.request(
                    method, url, headers=self._auth_headers(url), data=data, timeout=limits
                )
            except (httpx2.TransportError, httpx2.TimeoutException) as exc:
                watch.failed(self._host, what, describe_failure(exc, None))
                if fail_fast and isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
                    raise HubUnreachable(f"{what}: cannot connect to {self.endpoint} ({exc})") from exc
                error = exc
            else:
                mapped = error_from_response(response, repo_id=repo_id, what=what)
                if mapped is not None or response.status_code < 400:
                    watch.progress()  # an answer, even "no", is a sign of life
                if mapped is not None:
                    raise mapped
                if response.status_code < 400:
                    return response
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                watch.failed(self._host, what, describe_failure(None, status))
            try:
                policy = policy.increment(error=error, status=status, retry_after=retry_after)
            except RetriesExhausted as exc:
                raise exhausted(what, exc, server=self.endpoint, repo_id=repo_id) from exc
            delay = policy.backoff()
            if retry_after is not None or status == 429:
                watch.respite(delay)  # the server answered, asking for this wait
            watch.tick()
            self._clock.sleep(watch.pause(delay))

    def resolve_commit(
        self, repo_id: str, revision: str | None, repo_type: str = "model", *, fail_fast: bool = False
    ) -> str:
        """The 40-hex commit a revision (branch, tag, ``refs/pr/N``, commit) points to.

        ``fail_fast`` raises :class:`HubUnreachable` at once when the endpoint refuses the connection, so
        a caller holding a cached copy can answer from it instead of waiting out the retries.
        """
        rev = revision or "main"
        url = f"{self.endpoint}/api/{repo_type}s/{repo_id}/revision/{quote(rev, safe='')}"
        what = f"resolving {repo_id}@{rev}"
        response = self._request("GET", url, repo_id=repo_id, what=what, fail_fast=fail_fast)
        data = _api_json(response, repo_id=repo_id, what=what, expect=dict)
        sha = data.get("sha")
        if not isinstance(sha, str) or not COMMIT_RE.fullmatch(sha):
            raise HubError(
                f"the server did not return a commit for {repo_id}@{rev} (got {sha!r}); "
                "the endpoint does not speak the Hub API",
                repo_id=repo_id,
            )
        return sha

    def list_files(self, repo_id: str, commit: str, repo_type: str = "model") -> list[RemoteFile]:
        """Every file of the repo at ``commit`` (recursive, all pages), paths validated."""
        url: str | None = (
            f"{self.endpoint}/api/{repo_type}s/{repo_id}/tree/{quote(commit, safe='')}?recursive=true&expand=false"
        )
        files: list[RemoteFile] = []
        pages = 0
        while url:
            pages += 1
            if pages > 100_000:
                raise HubError(f"tree listing of {repo_id} did not end after 100000 pages", repo_id=repo_id)
            what = f"listing {repo_id}@{commit[:12]}"
            response = self._request("GET", url, repo_id=repo_id, what=what)
            files.extend(
                parse_entries(_api_json(response, repo_id=repo_id, what=what, expect=list), repo_id=repo_id)
            )
            nxt = response.links.get("next", {}).get("url")
            if nxt and not same_origin(nxt, self.endpoint):
                raise HubError(
                    f"tree pagination of {repo_id} pointed to another origin; refusing", repo_id=repo_id
                )
            url = nxt
        return files

    def paths_info(
        self, repo_id: str, commit: str, paths: Sequence[str], repo_type: str = "model"
    ) -> list[RemoteFile]:
        """Metadata for the given paths at ``commit`` (missing paths are absent from the result)."""
        for p in paths:
            validate_repo_path(p)
        url = f"{self.endpoint}/api/{repo_type}s/{repo_id}/paths-info/{quote(commit, safe='')}"
        what = f"looking up {', '.join(paths)} in {repo_id}"
        response = self._request(
            "POST", url, repo_id=repo_id, what=what, data={"paths": list(paths), "expand": "false"}
        )
        return list(
            parse_entries(_api_json(response, repo_id=repo_id, what=what, expect=list), repo_id=repo_id)
        )


def parse_entries(payload: Any, *, repo_id: str) -> Iterator[RemoteFile]:
    """Turn tree / paths-info JSON into validated :class:`RemoteFile` values (directories skipped)."""
    if not isinstance(payload, list):
        raise HubError(f"unexpected tree listing for {repo_id}: not a JSON list", repo_id=repo_id)
    for entry in payload:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            continue
        path = entry.get("path")
        size = entry.get("size")
        oid = entry.get("oid")
        if not isinstance(path, str):
            raise HubError(f"tree entry without a path in {repo_id}: {entry!r:.200}", repo_id=repo_id)
        validate_repo_path(path)
        if type(size) is not int or size < 0 or not isinstance(oid, str) or not COMMIT_RE.fullmatch(oid):
            raise HubError(f"tree entry {path!r} in {repo_id} has an invalid size or oid", repo_id=repo_id)
        lfs = entry.get("lfs")
        sha256 = None
        if isinstance(lfs, dict):
            sha256 = lfs.get("oid") or lfs.get("sha256")
            if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256) or lfs.get("size", size) != size:
                raise HubError(f"tree entry {path!r} in {repo_id} has an invalid LFS record", repo_id=repo_id)
        yield RemoteFile(path=path, size=size, blob_id=oid, lfs_sha256=sha256)


def check_unique_paths(files: Iterable[RemoteFile]) -> None:
    """Refuse listings that name one path twice (two different blobs for one snapshot path)."""
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise UnsafePath(f"the listing names {f.path!r} twice; refusing", path=f.path)
        seen.add(f.path)
