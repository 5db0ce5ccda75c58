"""A real Hugging Face Hub-compatible HTTP server for tests and demos, with fault injection.

Owns the public face of the test Hub: :class:`HubServer` (two listeners: the hub origin, ``/api/...`` and
``/{prefix}{repo}/resolve/...``, and a second "CDN" origin that serves LFS bodies), its repos, armed
faults, request log, byte counts and throttle, and the ``python -m vcache.testing.hub`` command. What a repo holds is
modelled in :mod:`vcache.testing._hubrepo`, which fault a request gets is decided in
:mod:`vcache.testing._hubfaults`, and the wire protocol lives in :mod:`vcache.testing._hubhttp`. The
behaviour follows ``docs/hub-protocol.md`` (huggingface_hub 2.4.0).

It must never: contact anything but its own two listeners; compress a body; send an ``X-Xet-*`` header or
``xetHash`` (the official client would switch to Xet); redirect to a Hub origin such as huggingface.co;
or spend Python time per byte of an unfaulted body (bodies go out with ``os.sendfile`` or one ``send``
of a memoryview, so the client under test, not this server, is what a benchmark measures).

Quick use::

    repo = Repo("acme/tiny")
    repo.commit({"config.json": b"{}", "model.safetensors": Path("weights.safetensors")})
    with HubServer([repo]) as hub:
        hub.fault("acme/tiny", "model.safetensors", Fault.drop_after(1 << 20))
        ...  # point a client at hub.endpoint
        assert hub.body_requests(path="model.safetensors")[0].body_bytes == 1 << 20

Run ``python -m vcache.testing.hub --root DIR`` to serve a folder of repos from a shell. With ``--control``
(``control=True``) the hub origin also answers ``GET /_testhub/log`` (the request log as JSON),
``GET /_testhub/counters`` (``sent_bytes`` and ``responses_in_progress``, live) and
``POST /_testhub/clear-log``, so that a benchmark can read what a server in another process wrote.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType

from vcache.testing._hubfaults import Fault, FaultTable
from vcache.testing._hubhttp import Exchange, LfsStyle, Listener, Origin, RequestRecord
from vcache.testing._hubrepo import Commit, Repo, RepoFile, RepoType, git_tree_ids, repos_from_directory

__all__ = ["Fault", "HubServer", "Repo", "RepoFile", "RequestRecord", "main", "repos_from_directory"]


class HubServer:
    """A Hub-compatible server on 127.0.0.1: a hub origin and a separate CDN origin, both threaded.

    ``lfs_style="redirect"`` answers LFS resolves with a 302 to :attr:`cdn_endpoint` (like the Hub);
    ``"direct"`` serves LFS bodies from the hub origin. ``tokens`` is the set of accepted bearer tokens
    (``None``: any token is accepted); private and gated repos need one. ``page_size`` is the tree page
    length. ``throttle_bps`` caps each connection's body rate and can be changed while running. Repos can
    be added and committed to while the server runs. ``digests=False`` serves like a mirror that sends no
    digest at all: no ``lfs`` record (so no sha256) in listings, no ``ETag`` or ``X-Linked-Etag`` on file
    answers; listings keep the git ``oid`` (for an LFS file, the id of its pointer, as git stores it). It can be
    changed while running. ``control=True`` enables the ``/_testhub/`` routes (see the module docstring). Use
    as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        repos: Iterable[Repo] = (),
        *,
        lfs_style: LfsStyle = "redirect",
        page_size: int = 1000,
        tokens: Iterable[str] | None = None,
        throttle_bps: float | None = None,
        digests: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        control: bool = False,
    ) -> None:
        if lfs_style not in ("redirect", "direct"):
            raise ValueError(f"lfs_style must be 'redirect' or 'direct', got {lfs_style!r}")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.lfs_style: LfsStyle = lfs_style
        self.page_size = page_size
        self.tokens: frozenset[str] | None = None if tokens is None else frozenset(tokens)
        self.throttle_bps = throttle_bps
        self.digests = digests
        self.control = control
        self._host, self._port, self._cdn_port = host, port, cdn_port
        self._repos: dict[tuple[RepoType, str], Repo] = {}
        self._repos_lock = threading.Lock()
        self._faults = FaultTable()
        self._log: list[RequestRecord] = []
        self._log_generation = 0
        self._log_lock = threading.Lock()
        self._sent_bytes = 0
        self._in_progress = 0
        self._stopping = threading.Event()
        self._listeners: dict[Origin, Listener] = {}
        self._serve_threads: list[threading.Thread] = []
        self._tree_ids: dict[str, dict[str, str]] = {}
        for repo in repos:
            self.add_repo(repo)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind both listeners and serve them from daemon threads; returns ``self``."""
        if self._listeners:
            raise RuntimeError("HubServer already started (a stopped server cannot be restarted)")
        try:
            self._listeners["hub"] = Listener((self._host, self._port), self, "hub")
            self._listeners["cdn"] = Listener((self._host, self._cdn_port), self, "cdn")
        except BaseException:
            for listener in self._listeners.values():
                listener.server_close()
            self._listeners.clear()
            raise
        for origin, listener in self._listeners.items():
            t = threading.Thread(
                target=listener.accept_loop,
                name=f"vcache-testhub-{origin}",
                daemon=True,
            )
            t.start()
            self._serve_threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving: close the listeners and every open connection, wake stalls, join threads."""
        if not self._listeners or self._stopping.is_set():
            return
        self._stopping.set()
        for listener in self._listeners.values():
            listener.wake()
        deadline = time.monotonic() + 2.0
        for t in self._serve_threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for listener in self._listeners.values():
            listener.server_close()
            listener.abort_connections()
        for listener in self._listeners.values():
            listener.join_handlers(deadline)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The hub origin, ``http://127.0.0.1:<port>``."""
        return self._url("hub")

    @property
    def cdn_endpoint(self) -> str:
        """The CDN origin (another port, so another origin) that LFS redirects point to."""
        return self._url("cdn")

    def _url(self, origin: Origin) -> str:
        listener = self._listeners.get(origin)
        if listener is None:
            raise RuntimeError("HubServer is not started")
        host, port = listener.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- repos, faults, throttle ----------------------------------------------------------------------

    def add_repo(self, repo: Repo) -> None:
        """Serve ``repo`` (replacing one with the same type and id); works before or after start."""
        with self._repos_lock:
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    def _repo(self, repo_type: RepoType, repo_id: str) -> Repo | None:
        with self._repos_lock:
            return self._repos.get((repo_type, repo_id))

    def fault(self, repo_id: str, path: str, *faults: Fault) -> None:
        """Arm ``faults`` for requests about ``path`` of ``repo_id`` (``"*"``: every path and API call).

        They are consumed in the order given, after any armed earlier. Faults are keyed by id alone, so a
        model and a dataset with the same id share them.
        """
        if not faults:
            raise ValueError("fault() needs at least one Fault")
        self._faults.add(repo_id, path, faults)

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    def pending_faults(self, repo_id: str | None = None, path: str | None = None) -> list[Fault]:
        """Armed faults with uses left (e.g. to assert that a test really hit the fault it set up)."""
        return self._faults.pending(repo_id, path)

    @property
    def throttle_bps(self) -> float | None:
        """Per-connection body bandwidth cap in bytes/s; ``None`` for unthrottled. Settable at run time."""
        return self._throttle_bps

    @throttle_bps.setter
    def throttle_bps(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("throttle_bps must be > 0 or None")
        self._throttle_bps = value

    # -- the request log ------------------------------------------------------------------------------

    @property
    def log(self) -> list[RequestRecord]:
        """Every request answered so far, in the order they finished (a copy).

        A request is logged before the last byte of its response is sent, so once a client has read a
        whole response its record is already here.
        """
        with self._log_lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests logged so far, and reset :attr:`sent_bytes`."""
        with self._log_lock:
            self._log.clear()
            self._log_generation += 1
            self._sent_bytes = 0

    @property
    def sent_bytes(self) -> int:
        """Bytes written to the sockets since the log was last cleared, responses still in progress included.

        Counted as each write returns (the server's send buffers included), so it is live: at most one
        write (1 MiB, or one paced chunk when throttled) behind per connection.
        """
        with self._log_lock:
            return self._sent_bytes

    @property
    def responses_in_progress(self) -> int:
        """Responses being written right now (0 once every connection cut by a killed client was noticed)."""
        with self._log_lock:
            return self._in_progress

    def counters(self) -> dict[str, int]:
        """:attr:`sent_bytes` and :attr:`responses_in_progress`, read together."""
        with self._log_lock:
            return {"sent_bytes": self._sent_bytes, "responses_in_progress": self._in_progress}

    def _count_sent(self, ex: Exchange, total: int, *, exact: bool = False) -> None:
        """Make ``ex``'s share of :attr:`sent_bytes` ``total`` (only ever more, unless ``exact``).

        A response's last bytes are counted when it is logged, just before they are written (as its record
        counts them), so a client that has read a whole response finds it counted; ``exact`` takes them
        back if that write failed.
        """
        if ex.internal:
            return
        with self._log_lock:
            if total > ex.counted or exact:
                self._sent_bytes = max(0, self._sent_bytes + total - ex.counted)
                ex.counted = total

    def _responses_begun(self, n: int) -> None:
        with self._log_lock:
            self._in_progress += n

    def body_requests(self, repo_id: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """GETs that were answered with (part of) a file body, on the hub or the CDN."""
        return [
            r
            for r in self.log
            if r.method == "GET"
            and r.file_path is not None
            and r.status in (200, 206)
            and (repo_id is None or r.repo_id == repo_id)
            and (path is None or r.file_path == path)
        ]

    def _record(
        self, ex: Exchange, slot: tuple[int, int] | None = None, unsent: int = 0, unsent_head: int = 0
    ) -> tuple[int, int]:
        """Log ``ex`` (or, given the ``slot`` it was logged in, correct that entry); control requests are
        not logged."""
        if ex.internal:
            return -1, -1
        self._count_sent(ex, ex.sent_bytes + unsent + unsent_head, exact=slot is not None)
        record = ex.to_record(unsent, unsent_head)
        with self._log_lock:
            if slot is not None:
                generation, index = slot
                if generation == self._log_generation:
                    self._log[index] = record
                return slot
            self._log.append(record)
            return self._log_generation, len(self._log) - 1

    # -- git tree ids (for directory entries) ---------------------------------------------------------

    def _tree_id(self, commit: Commit, directory: str) -> str:
        with self._repos_lock:
            ids = self._tree_ids.get(commit.id)
        if ids is None:
            ids = git_tree_ids(commit.files)
            with self._repos_lock:
                self._tree_ids[commit.id] = ids
        return ids[directory]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve every repo folder under ``--root`` until interrupted (Ctrl-C or SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m vcache.testing.hub",
        description="Serve the repos under a folder as a local Hugging Face Hub (for tests and demos).",
    )
    parser.add_argument("--root", type=Path, required=True, help="folder of <org>/<name>/ repo folders")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="hub port (0: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any free port)")
    parser.add_argument("--lfs-style", choices=("redirect", "direct"), default="redirect")
    parser.add_argument("--throttle", type=float, default=None, metavar="BPS", help="bytes/s per connection")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also answer GET /_testhub/log, GET /_testhub/counters and POST /_testhub/clear-log",
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a folder")
    repos = repos_from_directory(args.root)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM only set the event: a KeyboardInterrupt landing mid-startup or mid-shutdown
        # could leave listener threads running and the process hanging.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    server = HubServer(
        repos,
        lfs_style=args.lfs_style,
        throttle_bps=args.throttle,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        control=args.control,
    )
    with server as hub:
        print(f"endpoint: {hub.endpoint}", flush=True)
        print(f"cdn: {hub.cdn_endpoint}", flush=True)
        for repo in repos:
            print(f"repo: {repo.repo_type} {repo.repo_id} main={repo.resolve('main')}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
