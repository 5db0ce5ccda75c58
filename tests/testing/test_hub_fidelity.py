"""The official ``huggingface_hub`` 2.4 client against the test Hub: what it downloads, lists and reports
matches the repos byte for byte, for both LFS styles, every kind of revision and a paginated tree.

``huggingface_hub`` reads its configuration from the environment when it is imported, so it runs in one
child process with the recommended test environment: ``HF_ENDPOINT`` is the redirect-style server (so that
server is a known Hub origin exactly as huggingface.co is, and its CDN is a foreign origin), ``HF_HOME`` is
temporary, telemetry, Xet and progress bars are off. The child (``python this_file.py plan.json``) runs
every ``check_*`` function below once and writes their results as JSON; the tests here assert on those
results and on the servers' request logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vcache.testing.hub import Fault, HubServer, Repo

TOKEN = "hf_good"
BIG = "big.safetensors"
BIG_SIZE = 12 * 1024 * 1024
DROP_AT = 10 * 1024 * 1024 + 512 * 1024  # past the client's first 10 MiB chunk, so it resumes at 10 MiB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The child: each check gets the plan and returns something JSON-able.

Plan = dict[str, Any]


def _tree_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (following the snapshot's symlinks), by relative path."""
    return {
        p.relative_to(folder).as_posix(): sha256(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _repo_cache(cache: Path, folder: str) -> dict[str, Any]:
    """The blob names, refs and ``.no_exist`` markers the client wrote for one repo."""
    root = cache / folder

    def files(sub: str) -> list[Path]:
        return sorted(p for p in (root / sub).rglob("*") if p.is_file())

    return {
        "blobs": [p.name for p in files("blobs")],
        "refs": {p.relative_to(root / "refs").as_posix(): p.read_text() for p in files("refs")},
        "no_exist": [p.relative_to(root / ".no_exist").as_posix() for p in files(".no_exist")],
    }


def check_snapshot_redirect(plan: Plan) -> Any:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download("acme/tiny"))  # endpoint and cache from the environment
    return {
        "commit": path.name,
        "files": _tree_files(path),
        **_repo_cache(Path(plan["cache"]), "models--acme--tiny"),
    }


def check_snapshot_revisions(plan: Plan) -> Any:
    from huggingface_hub import snapshot_download

    out = {}
    for rev in ("dev", "v1.0", plan["init"], "refs/pr/1"):
        path = Path(snapshot_download("acme/tiny", revision=rev, cache_dir=plan["cache_revisions"]))
        out[rev] = {"commit": path.name, "files": _tree_files(path)}
    return {"snapshots": out, **_repo_cache(Path(plan["cache_revisions"]), "models--acme--tiny")}


def check_snapshot_direct(plan: Plan) -> Any:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download("acme/tiny", endpoint=plan["direct"], cache_dir=plan["cache_direct"]))
    return {
        "commit": path.name,
        "files": _tree_files(path),
        **_repo_cache(Path(plan["cache_direct"]), "models--acme--tiny"),
    }


def check_single_files(plan: Plan) -> Any:
    from huggingface_hub import hf_hub_download

    out = {}
    for key, endpoint, filename, revision in (
        ("lfs-main-redirect", None, "model.safetensors", None),
        ("nested-tag-redirect", None, "sub/dir/notes.txt", "v1.0"),
        ("lfs-pr-direct", plan["direct"], "weights/shard.bin", "refs/pr/1"),
        ("space-in-name-commit-direct", plan["direct"], "docs/read me.txt", plan["init"]),
        ("one-segment-repo", None, "config.json", None),
    ):
        repo = "tinygpt" if key == "one-segment-repo" else "acme/tiny"
        path = hf_hub_download(
            repo, filename, revision=revision, endpoint=endpoint, cache_dir=plan["cache_single"]
        )
        out[key] = {"sha256": sha256(Path(path).read_bytes()), "snapshot_path": Path(path).as_posix()}
    return out


def check_dataset(plan: Plan) -> Any:
    from huggingface_hub import HfApi, snapshot_download

    path = Path(snapshot_download("acme/ds", repo_type="dataset", revision="refs/convert/parquet"))
    info = HfApi().dataset_info("acme/ds", revision="refs/convert/parquet")
    return {"files": _tree_files(path), "sha": info.sha, "cache_folder": path.parents[1].name}


def check_model_info(plan: Plan) -> Any:
    from huggingface_hub import HfApi

    out: dict[str, Any] = {}
    for key, endpoint in (("redirect", None), ("direct", plan["direct"])):
        info = HfApi(endpoint=endpoint).model_info("acme/tiny", files_metadata=True)
        out[key] = {
            "id": info.id,
            "sha": info.sha,
            "siblings": {
                s.rfilename: {
                    "size": s.size,
                    "blob_id": s.blob_id,
                    "lfs": None if s.lfs is None else [s.lfs.sha256, s.lfs.size, s.lfs.pointer_size],
                }
                for s in info.siblings or []
            },
        }
    out["pr_sha"] = HfApi().model_info("acme/tiny", revision="refs/pr/1").sha
    return out


def check_tree(plan: Plan) -> Any:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()

    def describe(entries: Any) -> list[dict[str, Any]]:
        out = []
        for e in entries:
            if isinstance(e, RepoFile):
                lfs = None if e.lfs is None else [e.lfs.sha256, e.lfs.size, e.lfs.pointer_size]
                last = e.last_commit.oid if e.last_commit else None
                out.append(
                    {
                        "type": "file",
                        "path": e.path,
                        "size": e.size,
                        "oid": e.blob_id,
                        "lfs": lfs,
                        "last": last,
                    }
                )
            else:
                out.append({"type": "directory", "path": e.path, "oid": e.tree_id})
        return out

    return {
        "recursive": describe(api.list_repo_tree("acme/tiny", recursive=True)),
        "top": describe(api.list_repo_tree("acme/tiny")),
        "subdir": describe(api.list_repo_tree("acme/tiny", path_in_repo="sub/dir", revision="v1.0")),
        "expanded": describe(api.list_repo_tree("acme/tiny", recursive=True, expand=True)),
        "paths_info": describe(
            api.get_paths_info(
                "acme/tiny", ["config.json", "sub/dir", "missing.txt", "pr.txt"], revision="refs/pr/1"
            )
        ),
    }


def check_errors(plan: Plan) -> Any:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    def outcome(call: Callable[[], object]) -> dict[str, Any]:
        try:
            call()
        except HfHubHTTPError as e:
            return {
                "error": type(e).__name__,
                "status": e.response.status_code if e.response is not None else None,
            }
        except Exception as e:
            return {"error": type(e).__name__, "status": None}
        return {"error": None, "status": None}

    cache = plan["cache_errors"]
    out = {
        "missing_file": outcome(lambda: hf_hub_download("acme/tiny", "missing.txt", cache_dir=cache)),
        "missing_revision": outcome(
            lambda: hf_hub_download("acme/tiny", "config.json", revision="nope", cache_dir=cache)
        ),
        "missing_repo": outcome(lambda: hf_hub_download("acme/nope", "config.json", cache_dir=cache)),
        "private_no_token": outcome(lambda: hf_hub_download("acme/secret", "config.json", cache_dir=cache)),
        "gated_no_token": outcome(lambda: hf_hub_download("acme/gated", "config.json", cache_dir=cache)),
        "bad_token": outcome(lambda: HfApi().model_info("acme/tiny", token="hf_bad")),
        "missing_revision_api": outcome(lambda: HfApi().model_info("acme/tiny", revision="nope")),
        "missing_folder_tree": outcome(
            lambda: list(HfApi().list_repo_tree("acme/tiny", path_in_repo="nope"))
        ),
    }
    out["cache"] = _repo_cache(Path(cache), "models--acme--tiny")
    return out


def check_private_with_token(plan: Plan) -> Any:
    from huggingface_hub import hf_hub_download

    out = {}
    for key, endpoint in (("redirect", None), ("direct", plan["direct"])):
        path = hf_hub_download(
            "acme/secret",
            "model.safetensors",
            token=TOKEN,
            endpoint=endpoint,
            cache_dir=plan[f"cache_private_{key}"],
        )
        out[key] = sha256(Path(path).read_bytes())
    return out


def check_resume(plan: Plan) -> Any:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download("acme/big", BIG, cache_dir=plan["cache_resume"])
    return sha256(Path(path).read_bytes())


def check_reset(plan: Plan) -> Any:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download("acme/big", BIG, endpoint=plan["direct"], cache_dir=plan["cache_reset"])
    except Exception as e:
        return type(e).__name__
    return None


CHECKS: dict[str, Callable[[Plan], Any]] = {
    name.removeprefix("check_"): fn for name, fn in sorted(globals().items()) if name.startswith("check_")
}


def child_main(plan_path: str) -> None:
    """Run every check and write ``{name: {"value": ...} | {"error": traceback}}`` next to the plan."""
    plan = json.loads(Path(plan_path).read_text())
    results: dict[str, Any] = {}
    for name, check in CHECKS.items():
        try:
            results[name] = {"value": check(plan)}
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    Path(plan["results"]).write_text(json.dumps(results))


# ---------------------------------------------------------------------------------------------------------
# The parent: repos, servers, one child run.


@dataclass
class Run:
    """The repos and servers of the fidelity run, and what the child reported."""

    tiny: Repo
    big: bytes
    secret: Repo
    redirect: HubServer
    direct: HubServer
    results: dict[str, Any]
    plan: Plan

    def value(self, name: str) -> Any:
        result = self.results[name]
        if "error" in result:
            pytest.fail(f"check_{name} failed in the client process:\n{result['error']}")
        return result["value"]


def build_repos(tmp: Path) -> tuple[Repo, Repo, bytes, list[Repo]]:
    weights = tmp / "weights.safetensors"
    weights.write_bytes(os.urandom(400_000))
    tiny = Repo("acme/tiny")
    init = tiny.commit(
        {
            "config.json": b'{"model_type": "tiny"}\n',
            "model.safetensors": weights,
            "weights/shard.bin": os.urandom(50_000),
            "sub/dir/notes.txt": b"nested notes\n",
            "docs/read me.txt": b"a space\n",
        },
        message="init",
    )
    tiny.tag("v1.0", init)
    tiny.branch("dev", init)
    tiny.commit({"dev-only.txt": b"dev\n"}, branch="dev", message="dev work")
    main = tiny.commit({"config.json": b'{"model_type": "tiny", "v": 2}\n'}, message="bump")
    tiny.branch("proposal", main)
    pr = tiny.commit(
        {"pr.txt": b"pr\n", "weights/shard.bin": os.urandom(30_000)}, branch="proposal", message="pr"
    )
    tiny.pr(1, pr)

    gpt = Repo("tinygpt")
    gpt.commit({"config.json": b"{}"})
    ds = Repo("acme/ds", repo_type="dataset")
    ds.commit({"data/train.txt": b"a\nb\n", "README.md": b"# ds\n"})
    ds.ref(
        "refs/convert/parquet",
        ds.commit({"data/train.parquet": b"PAR1"}, branch="convert", message="parquet"),
    )
    secret = Repo("acme/secret", private=True)
    secret.commit({"config.json": b"{}", "model.safetensors": os.urandom(20_000)})
    gated = Repo("acme/gated", gated="manual")
    gated.commit({"config.json": b"{}"})
    big = os.urandom(BIG_SIZE)
    big_repo = Repo("acme/big")
    big_repo.commit({BIG: big})
    return tiny, secret, big, [gpt, ds, secret, gated, big_repo]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("fidelity")
    tiny, secret, big, others = build_repos(tmp)
    with (
        HubServer([tiny, *others], lfs_style="redirect", page_size=2, tokens={TOKEN}) as redirect,
        HubServer([tiny, *others], lfs_style="direct", tokens={TOKEN}) as direct,
    ):
        # A clean close mid-body (what the client resumes from) on one server, a reset on the other.
        redirect.fault("acme/big", BIG, Fault.short_body(DROP_AT))
        direct.fault("acme/big", BIG, Fault.drop_after(DROP_AT))
        home = tmp / "hf_home"
        plan: Plan = {
            "direct": direct.endpoint,
            "init": tiny.resolve("v1.0"),
            "cache": str(home / "hub"),
            "results": str(tmp / "results.json"),
            **{
                f"cache_{name}": str(tmp / f"cache_{name}")
                for name in (
                    "revisions",
                    "direct",
                    "single",
                    "errors",
                    "private_redirect",
                    "private_direct",
                    "resume",
                    "reset",
                )
            },
        }
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            HF_ENDPOINT=redirect.endpoint,
            HF_HOME=str(home),
            HF_HUB_CACHE=str(home / "hub"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_SYMLINKS_WARNING="1",
        )
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run(
            [sys.executable, __file__, str(plan_path)], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        results = json.loads(Path(plan["results"]).read_text())
        yield Run(tiny, big, secret, redirect, direct, results, plan)


def expected_files(repo: Repo, rev: str) -> dict[str, str]:
    return {path: sha256(f.read_bytes()) for path, f in repo.files_at(rev).items()}


# ---------------------------------------------------------------------------------------------------------
# The tests


def test_snapshot_download_redirect_style(run: Run) -> None:
    got = run.value("snapshot_redirect")
    files = run.tiny.files_at("main")
    assert got["commit"] == run.tiny.resolve("main")
    assert got["files"] == expected_files(run.tiny, "main")
    assert got["blobs"] == sorted({f.etag for f in files.values()})  # blob names: sha256 for LFS, git id else
    assert got["refs"] == {"main": run.tiny.resolve("main")}
    lfs_paths = {p for p, f in files.items() if f.lfs}
    assert {r.file_path for r in run.redirect.body_requests("acme/tiny") if r.origin == "cdn"} >= lfs_paths
    # The HEAD stopped at the cross-origin 302 and used its X-Linked-* headers; the GET went straight to
    # the CDN, so the hub never saw a GET for an LFS file.
    lfs_on_hub = [
        r
        for r in run.redirect.log
        if r.origin == "hub" and r.repo_id == "acme/tiny" and r.file_path in lfs_paths
    ]
    assert lfs_on_hub and {(r.method, r.status) for r in lfs_on_hub} == {("HEAD", 302)}
    # The tree came in pages of two (page_size=2), each page fetched through the Link header.
    tree_pages = [
        r
        for r in run.redirect.log
        if "/tree/" in r.raw_path and r.repo_id == "acme/tiny" and r.query.get("recursive") == ["true"]
    ]
    assert len([r for r in tree_pages if "cursor" in r.query]) >= 3


def test_snapshot_download_every_revision_kind(run: Run) -> None:
    got = run.value("snapshot_revisions")
    for rev, snap in got["snapshots"].items():
        assert snap["commit"] == run.tiny.resolve(rev), rev
        assert snap["files"] == expected_files(run.tiny, rev), rev
    assert got["refs"] == {
        "dev": run.tiny.resolve("dev"),
        "v1.0": run.tiny.resolve("v1.0"),
        "refs/pr/1": run.tiny.resolve("refs/pr/1"),
    }
    assert any("refs%2Fpr%2F1" in r.raw_path for r in run.redirect.log)


def test_snapshot_download_direct_style(run: Run) -> None:
    got = run.value("snapshot_direct")
    assert got["files"] == expected_files(run.tiny, "main")
    assert got["blobs"] == sorted({f.etag for f in run.tiny.files_at("main").values()})
    assert {r.origin for r in run.direct.body_requests("acme/tiny")} == {"hub"}


def test_hf_hub_download_single_files(run: Run) -> None:
    got = run.value("single_files")
    tiny = run.tiny
    expect = {
        "lfs-main-redirect": sha256(tiny.files_at("main")["model.safetensors"].read_bytes()),
        "nested-tag-redirect": sha256(b"nested notes\n"),
        "lfs-pr-direct": sha256(tiny.files_at("refs/pr/1")["weights/shard.bin"].read_bytes()),
        "space-in-name-commit-direct": sha256(b"a space\n"),
        "one-segment-repo": sha256(b"{}"),
    }
    assert {k: v["sha256"] for k, v in got.items()} == expect
    assert f"snapshots/{tiny.resolve('refs/pr/1')}/weights/shard.bin" in got["lfs-pr-direct"]["snapshot_path"]
    assert "models--tinygpt/" in got["one-segment-repo"]["snapshot_path"]


def test_dataset_with_a_convert_ref(run: Run) -> None:
    got = run.value("dataset")
    assert got["cache_folder"] == "datasets--acme--ds"
    assert set(got["files"]) == {"data/train.parquet"}  # a new branch starts empty, like a real convert ref
    assert any("refs%2Fconvert%2Fparquet" in r.raw_path for r in run.redirect.log)


def test_model_info_with_files_metadata(run: Run) -> None:
    got = run.value("model_info")
    files = run.tiny.files_at("main")
    for style in ("redirect", "direct"):
        info = got[style]
        assert info["id"] == "acme/tiny" and info["sha"] == run.tiny.resolve("main")
        assert set(info["siblings"]) == set(files)
        for path, s in info["siblings"].items():
            f = files[path]
            assert s["size"] == f.size and s["blob_id"] == f.blob_id
            assert s["lfs"] == ([f.sha256, f.size, len(f.pointer or b"")] if f.lfs else None)
    assert got["pr_sha"] == run.tiny.resolve("refs/pr/1")


def test_list_repo_tree_and_paths_info(run: Run) -> None:
    got = run.value("tree")
    files = run.tiny.files_at("main")
    recursive = {e["path"]: e for e in got["recursive"]}
    assert {p for p, e in recursive.items() if e["type"] == "file"} == set(files)
    assert {p for p, e in recursive.items() if e["type"] == "directory"} == {
        "docs",
        "sub",
        "sub/dir",
        "weights",
    }
    for path, f in files.items():
        e = recursive[path]
        assert (e["size"], e["oid"]) == (f.size, f.blob_id)
        assert e["lfs"] == ([f.sha256, f.size, len(f.pointer or b"")] if f.lfs else None)
        assert e["last"] is None
    assert sorted(e["path"] for e in got["top"]) == [
        "config.json",
        "docs",
        "model.safetensors",
        "sub",
        "weights",
    ]
    assert [e["path"] for e in got["subdir"]] == ["sub/dir/notes.txt"]
    last = {e["path"]: e["last"] for e in got["expanded"] if e["type"] == "file"}
    assert last["config.json"] == run.tiny.resolve("main") and last["model.safetensors"] == run.tiny.resolve(
        "v1.0"
    )
    assert {e["path"] for e in got["paths_info"]} == {"config.json", "sub/dir", "pr.txt"}


def test_errors_map_to_the_official_exceptions(run: Run) -> None:
    got = run.value("errors")
    assert got["missing_file"]["error"] == "RemoteEntryNotFoundError"
    assert got["missing_revision"]["error"] == "RevisionNotFoundError"
    assert got["missing_repo"]["error"] == "RepositoryNotFoundError"
    assert got["private_no_token"]["error"] == "RepositoryNotFoundError"
    assert got["gated_no_token"]["error"] == "GatedRepoError"
    assert got["bad_token"] == {"error": "HfHubHTTPError", "status": 401}  # not "repository not found"
    assert got["missing_revision_api"]["error"] == "RevisionNotFoundError"
    assert got["missing_folder_tree"]["error"] == "RemoteEntryNotFoundError"
    # The 404 carried X-Repo-Commit, so the client remembered the miss.
    assert got["cache"]["no_exist"] == [f"{run.tiny.resolve('main')}/missing.txt"]


def test_cdn_request_carries_no_authorization(run: Run) -> None:
    got = run.value("private_with_token")
    expected = sha256(run.secret.files_at("main")["model.safetensors"].read_bytes())
    assert got == {"redirect": expected, "direct": expected}
    records = [
        r for r in run.redirect.log if r.repo_id == "acme/secret" and r.file_path == "model.safetensors"
    ]
    head = [r for r in records if r.origin == "hub"]
    cdn = [r for r in records if r.origin == "cdn"]
    assert head and all(r.authorization == f"Bearer {TOKEN}" and r.status == 302 for r in head)
    assert cdn and all(r.authorization is None and r.status == 200 for r in cdn)  # stripped cross-origin
    direct = [r for r in run.direct.log if r.repo_id == "acme/secret" and r.method == "GET"]
    assert direct and all(r.authorization == f"Bearer {TOKEN}" for r in direct)


def test_resume_after_a_short_body_uses_range(run: Run) -> None:
    assert run.value("resume") == sha256(run.big)
    gets = run.redirect.body_requests("acme/big", BIG)
    assert [(r.origin, r.range, r.status) for r in gets] == [
        ("cdn", None, 200),
        ("cdn", "bytes=10485760-", 206),
    ]
    assert gets[0].body_bytes == DROP_AT and gets[1].body_bytes == BIG_SIZE - 10 * 1024 * 1024
    assert run.redirect.pending_faults() == []


def test_the_official_client_does_not_resume_after_a_reset(run: Run) -> None:
    """Documents 2.4.0: a TCP RST mid-body is an ``httpx2.ReadError``, which ``http_get`` does not retry."""
    assert run.value("reset") == "ReadError"
    gets = run.direct.body_requests("acme/big", BIG)
    assert [(r.range, r.body_bytes) for r in gets] == [(None, DROP_AT)]


def test_no_request_left_the_servers_unanswered(run: Run) -> None:
    for server in (run.redirect, run.direct):
        assert all(r.status != 500 for r in server.log)
        assert not [r for r in server.log if r.raw_path == "/api/agent-harnesses"]  # telemetry was off


if __name__ == "__main__":
    child_main(sys.argv[1])
