"""Model signatures: repos signed by model-signing itself, served by the local Hub, pulled with --verify-signature.

Keys and certificates are made here with cryptography; the signatures are made by model-signing's own Python
API over a folder written by ``vcache.testing.models``, exactly as a publisher would sign before uploading.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("model_signing", reason="needs the signing extra: pip install 'vcache[signing]'")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import vcache
from test_cli import run
from test_cli import vcache as vcache_process
from vcache.cache import CacheRepo
from vcache.errors import TransferError, UsageError, VerificationFailed
from vcache.pull import pull
from vcache.report import PullReport, Severity
from vcache.signing import SIGNATURE_FILE, SignatureMethod, prepare
from vcache.testing.hub import HubServer, Repo
from vcache.testing.models import repo_from_folder, row_byte_range

REPO = "acme/signed-llama"
SHARD1 = "model-00001-of-00002.safetensors"


# -- keys, certificates and signing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_key(folder: Path, name: str) -> KeyPair:
    """An EC P-256 key pair written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.key.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


@dataclass(frozen=True)
class CertChain:
    ca: Path  # the root to trust
    leaf_key: Path
    leaf: Path


def make_chain(folder: Path, name: str) -> CertChain:
    """A self-signed CA and a code-signing leaf certificate it issued (EC P-256, valid around now)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} model publisher")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = CertChain(folder / f"{name}.ca.pem", folder / f"{name}.leaf.key.pem", folder / f"{name}.leaf.pem")
    chain.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.leaf.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    chain.leaf_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return chain


def sign_folder(folder: Path, *, key: KeyPair | None = None, chain: CertChain | None = None) -> Path:
    """Sign ``folder`` in place with model-signing, as its command line does (the signature file left out)."""
    import model_signing

    config = model_signing.signing.Config().set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    )
    if key is not None:
        config = config.use_elliptic_key_signer(private_key=key.private)
    else:
        assert chain is not None
        config = config.use_certificate_signer(
            private_key=chain.leaf_key, signing_certificate=chain.leaf, certificate_chain=[chain.ca]
        )
    config.sign(folder, folder / SIGNATURE_FILE)
    return folder / SIGNATURE_FILE


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    folder = tmp_path_factory.mktemp("keys")
    return {"publisher": make_key(folder, "publisher"), "other": make_key(folder, "other")}


@pytest.fixture(scope="session")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertChain]:
    folder = tmp_path_factory.mktemp("certs")
    return {"publisher": make_chain(folder, "publisher"), "other": make_chain(folder, "other")}


@pytest.fixture
def model(llama_folder: Path, tmp_path: Path) -> Path:
    """A writable copy of the generated checkpoint (config, index, two shards, a nested text file)."""
    return Path(shutil.copytree(llama_folder, tmp_path / "model"))


@pytest.fixture
def signed(model: Path, keys: dict[str, KeyPair]) -> Path:
    """The checkpoint signed by the publisher's key, ``model.sig`` at its root."""
    sign_folder(model, key=keys["publisher"])
    return model


def serve(folder: Path) -> tuple[Repo, HubServer]:
    repo = repo_from_folder(REPO, folder)
    return repo, HubServer([repo])


@pytest.fixture
def signed_hub(signed: Path) -> Iterator[tuple[Repo, HubServer]]:
    repo, server = serve(signed)
    with server:
        yield repo, server


def key_method(pair: KeyPair) -> str:
    return f"key:{pair.public}"


def findings(report: PullReport, code: str) -> list[tuple[str, Any]]:
    return [(fr.path, x) for fr in report.files for x in fr.findings if x.code == code]


def assert_refused(report: PullReport, cache_dir: Path) -> None:
    """The pull failed and published no ref."""
    assert not report.ok
    assert CacheRepo(cache_dir, REPO).read_ref("main") is None


def changed_bytes(folder: Path, path: str) -> bytes:
    """The file at ``path`` changed as a publisher (or an attacker) would, still valid of its kind: one weight
    of a safetensors shard set to another finite value, or one more key in a JSON file."""
    if path.endswith(".json"):
        doc = json.loads((folder / path).read_text())
        doc["injected"] = True
        return json.dumps(doc).encode()
    from safetensors import safe_open

    with safe_open(str(folder / path), "numpy") as f:
        names = f.keys()  # a safe_open handle is not iterable itself
        name = next(n for n in names if len(f.get_slice(n).get_shape()) == 2)
    data = bytearray((folder / path).read_bytes())
    start, _end = row_byte_range(folder / path, name, [0])
    data[start : start + 4] = struct.pack("<f", 0.123456)
    return bytes(data)


# -- the key method ---------------------------------------------------------------------------------------------


def test_a_signed_repo_pulls_with_its_public_key(
    signed_hub: tuple[Repo, HubServer], keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    repo, hub = signed_hub
    done = vcache_process(
        "pull",
        REPO,
        "--cache-dir",
        str(cache_dir),
        "--json",
        "--verify-signature",
        key_method(keys["publisher"]),
        env={"HF_ENDPOINT": hub.endpoint},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["verdict"] == "ok"
    (sig,) = [f for f in doc["files"] if f["path"] == SIGNATURE_FILE]
    (note,) = [x for x in sig["findings"] if x["code"] == "signature.verified"]
    assert note["detail"]["signed"] == len(repo.files_at("main")) - 1 and note["detail"]["not_pulled"] == []
    assert CacheRepo(cache_dir, REPO).read_ref("main") == repo.resolve("main")
    # The same from Python, answered from the cache; offline too.
    path = vcache.snapshot_download(
        REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["publisher"])
    )
    assert (Path(path) / SIGNATURE_FILE).is_file()
    offline = pull(
        REPO, cache_dir=cache_dir, local_files_only=True, verify_signature=key_method(keys["publisher"])
    )
    assert offline.ok and findings(offline, "signature.verified")


def test_no_large_file_is_read_again_to_compare_with_the_signature(
    signed_hub: tuple[Repo, HubServer],
    keys: dict[str, KeyPair],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import vcache.signing

    _repo, hub = signed_hub
    read_again: list[str] = []
    real = vcache.signing.sha256_of_git_file

    def spy(path: Any, blob_id: Any) -> Any:
        read_again.append(Path(path).name)
        return real(path, blob_id)

    monkeypatch.setattr(vcache.signing, "sha256_of_git_file", spy)
    report = pull(
        REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["publisher"])
    )
    assert report.ok, report.to_json()
    assert read_again and not any(name.endswith(".safetensors") for name in read_again)


@pytest.mark.parametrize("changed", [SHARD1, "config.json"])
def test_a_file_changed_after_signing_fails_with_a_mismatch_naming_it(
    signed: Path, keys: dict[str, KeyPair], cache_dir: Path, changed: str
) -> None:
    repo, server = serve(signed)
    # The server is consistent with itself: a new commit whose listing and digests describe the new bytes.
    repo.commit({changed: changed_bytes(signed, changed)}, message="silently replaced")
    with server as hub:
        report = pull(
            REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["publisher"])
        )
        assert_refused(report, cache_dir)
        (hit,) = findings(report, "signature.mismatch")
        assert hit[0] == changed and changed in hit[1].message and hit[1].severity is Severity.FAIL
        assert not any(
            x.code.startswith("signature.") for fr in report.files if fr.path != changed for x in fr.findings
        )
        # The files passed their own checks: their blobs stay (content-addressed), only no ref is written.
        assert all(fr.quarantine_id is None for fr in report.files)
        with pytest.raises(VerificationFailed, match=changed):
            vcache.snapshot_download(
                REPO,
                endpoint=hub.endpoint,
                cache_dir=cache_dir,
                verify_signature=key_method(keys["publisher"]),
            )
        # Without --verify-signature the same pull succeeds: the server agrees with itself.
        assert pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir).ok


def test_the_cli_exits_1_and_names_the_changed_file(
    signed: Path, keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    repo, server = serve(signed)
    repo.commit({SHARD1: changed_bytes(signed, SHARD1)})
    with server as hub:
        res = run(
            "pull",
            REPO,
            "--cache-dir",
            str(cache_dir),
            "--quiet",
            "--verify-signature",
            key_method(keys["publisher"]),
            env={"HF_ENDPOINT": hub.endpoint},
        )
    assert res.exit_code == 1, res.output
    line = next(ln for ln in res.output.splitlines() if "[signature.mismatch]" in ln)
    assert SHARD1 in line
    assert CacheRepo(cache_dir, REPO).read_ref("main") is None


def test_a_repo_signed_by_another_key_is_untrusted(
    signed_hub: tuple[Repo, HubServer], keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    _repo, hub = signed_hub
    report = pull(
        REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["other"])
    )
    assert_refused(report, cache_dir)
    ((path, finding),) = findings(report, "signature.untrusted")
    assert path == SIGNATURE_FILE and str(keys["other"].public) in finding.message


def test_a_signature_that_does_not_verify_is_invalid(
    signed: Path, keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    # An older bundle that does not name its key, made by another key: the trusted key cannot verify it.
    other = Path(shutil.copytree(signed, signed.parent / "other"))
    (other / SIGNATURE_FILE).unlink()
    sign_folder(other, key=keys["other"])
    forged = json.loads((other / SIGNATURE_FILE).read_text())
    forged["verificationMaterial"]["publicKey"]["hint"] = None
    # A statement changed after signing (one digest edited), the signature kept.
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    tampered = json.loads(json.dumps(bundle))
    tampered["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    repo = repo_from_folder(REPO, signed)
    with HubServer([repo]) as hub:
        for i, (content, needle) in enumerate(
            [
                (json.dumps(forged).encode(), "does not verify"),
                (json.dumps(tampered).encode(), "changed after signing"),
                (b"not a bundle\n", "not a sigstore bundle"),
            ]
        ):
            repo.commit({SIGNATURE_FILE: content})
            where = cache_dir / str(i)
            report = pull(
                REPO, endpoint=hub.endpoint, cache_dir=where, verify_signature=key_method(keys["publisher"])
            )
            assert not report.ok and CacheRepo(where, REPO).read_ref("main") is None
            ((path, finding),) = findings(report, "signature.invalid")
            assert path == SIGNATURE_FILE and needle in finding.message


def test_a_repo_without_a_signature_fails_with_missing(
    model: Path, keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    _repo, server = serve(model)
    with server as hub:
        report = pull(
            REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["publisher"])
        )
        assert_refused(report, cache_dir)
        ((path, finding),) = findings(report, "signature.missing")
        assert path == SIGNATURE_FILE and REPO in finding.message
        # An exact-file pull asks for the signature too, and misses it the same way.
        one = pull(
            REPO,
            endpoint=hub.endpoint,
            cache_dir=cache_dir,
            files=["config.json"],
            verify_signature=key_method(keys["publisher"]),
        )
        assert findings(one, "signature.missing") and not one.ok


def test_an_unsigned_file_fails_unless_the_signature_ignores_it(
    signed: Path, keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    repo, server = serve(signed)
    repo.commit({"extra.py": b"print('not signed')\n", ".gitattributes": b"*.safetensors filter=lfs\n"})
    method = key_method(keys["publisher"])
    with server as hub:
        report = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir / "a", verify_signature=method)
        assert_refused(report, cache_dir / "a")
        # .gitattributes is covered by the signature's ignore rules; extra.py is not.
        assert [p for p, _ in findings(report, "signature.mismatch")] == ["extra.py"]
        # Left out of the pull, it is not in the snapshot: the rest matches the signature.
        kept = pull(
            REPO,
            endpoint=hub.endpoint,
            cache_dir=cache_dir / "b",
            verify_signature=method,
            ignore_patterns=["extra.py"],
        )
        assert kept.ok, kept.to_json()


def test_the_signature_is_pulled_whatever_the_patterns_select(
    signed_hub: tuple[Repo, HubServer], keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    _repo, hub = signed_hub
    report = pull(
        REPO,
        endpoint=hub.endpoint,
        cache_dir=cache_dir,
        allow_patterns=["config.json", "generation_config.json"],
        verify_signature=key_method(keys["publisher"]),
    )
    assert report.ok, report.to_json()
    ((path, note),) = findings(report, "signature.verified")
    assert path == SIGNATURE_FILE
    assert {SHARD1, "sub/dir/notes.txt"} <= set(note.detail["not_pulled"])  # signed, not pulled: not compared


def test_a_signed_file_missing_from_the_repo_is_a_mismatch(
    signed: Path, keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    repo, server = serve(signed)
    repo.commit({}, delete=["sub/dir/notes.txt"])
    with server as hub:
        report = pull(
            REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=key_method(keys["publisher"])
        )
    assert_refused(report, cache_dir)
    assert [p for p, _ in findings(report, "signature.mismatch")] == ["sub/dir/notes.txt"]


def test_from_pretrained_refuses_before_loading_when_the_signature_is_untrusted(
    signed_hub: tuple[Repo, HubServer], keys: dict[str, KeyPair], cache_dir: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    _repo, hub = signed_hub
    kw: dict[str, Any] = {"endpoint": hub.endpoint, "cache_dir": cache_dir}
    config = vcache.from_pretrained(
        transformers.AutoConfig, REPO, verify_signature=key_method(keys["publisher"]), **kw
    )
    assert config.num_hidden_layers == 2
    with pytest.raises(VerificationFailed, match=r"signature\.untrusted"):
        vcache.from_pretrained(
            transformers.AutoConfig, REPO, verify_signature=key_method(keys["other"]), **kw
        )


# -- the certificate method -------------------------------------------------------------------------------------


def test_the_certificate_method_works_offline(
    model: Path, chains: dict[str, CertChain], cache_dir: Path
) -> None:
    sign_folder(model, chain=chains["publisher"])
    _repo, server = serve(model)
    with server as hub:
        ok = pull(
            REPO,
            endpoint=hub.endpoint,
            cache_dir=cache_dir,
            verify_signature=f"certificate:{chains['publisher'].ca}",
        )
        assert ok.ok, ok.to_json()
        assert findings(ok, "signature.verified")
        other = pull(
            REPO,
            endpoint=hub.endpoint,
            cache_dir=cache_dir,
            verify_signature=f"certificate:{chains['other'].ca}",
        )
        assert [p for p, _ in findings(other, "signature.untrusted")] == [SIGNATURE_FILE]
        # Trusting the leaf's bare key instead: the signature names a certificate, not a key.
        leaf_key = model.parent / "leaf.pub.pem"
        leaf = x509.load_pem_x509_certificate(chains["publisher"].leaf.read_bytes())
        leaf_key.write_bytes(
            leaf.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        by_key = pull(REPO, endpoint=hub.endpoint, cache_dir=cache_dir, verify_signature=f"key:{leaf_key}")
        assert [p for p, _ in findings(by_key, "signature.untrusted")] == [SIGNATURE_FILE]
    # No Hub at all: the cached snapshot is checked against the chain from the cache alone.
    offline = pull(
        REPO,
        cache_dir=cache_dir,
        local_files_only=True,
        verify_signature=f"certificate:{chains['publisher'].ca}",
    )
    assert offline.ok and findings(offline, "signature.verified")


def test_verify_lock_checks_the_recorded_key_offline_and_says_sigstore_was_not_checked(
    signed_hub: tuple[Repo, HubServer], keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    _repo, hub = signed_hub
    lockfile, cache = tmp_path / "vcache.lock", tmp_path / "cache"
    method = key_method(keys["publisher"])
    res = run(
        "lock", REPO, "--verify-signature", method, "-o", str(lockfile), "--cache-dir", str(cache), "-q",
        env={"HF_ENDPOINT": hub.endpoint},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    hub.stop()  # offline from here on

    (report,) = vcache.verify(lock=lockfile, cache_dir=cache)
    assert report.ok and [p for p, _ in findings(report, "signature.verified")] == [SIGNATURE_FILE]

    # A lock recording another key: the signature is checked against it, and is untrusted (exit 1).
    other = tmp_path / "other.lock"
    other.write_text(lockfile.read_text().replace(method, key_method(keys["other"])))
    done = vcache_process("verify", "--lock", str(other), "--cache-dir", str(cache))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[signature.untrusted]" in done.stdout

    # sigstore needs the network: said not to be checked (a warning), never a silent pass.
    sigstore = tmp_path / "sigstore.lock"
    sigstore.write_text(
        lockfile.read_text().replace(method, "sigstore:release@example.com@https://accounts.google.com")
    )
    (report,) = vcache.verify(lock=sigstore, cache_dir=cache)
    ((path, note),) = findings(report, "signature.not_checked")
    assert path == SIGNATURE_FILE and note.severity is Severity.WARN and "not checked" in note.message
    assert not findings(report, "signature.verified") and report.verdict.value == "warn"


# -- sigstore ---------------------------------------------------------------------------------------------------

#: Makes every name but the loopback one unresolvable in the process it is loaded into: no network.
NO_NETWORK = """
import socket
_real = socket.getaddrinfo
def _loopback_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")
    return _real(host, *args, **kwargs)
socket.getaddrinfo = _loopback_only
"""


def test_sigstore_without_network_exits_3_with_a_clear_error(
    signed_hub: tuple[Repo, HubServer], tmp_path: Path, cache_dir: Path
) -> None:
    _repo, hub = signed_hub
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    import os

    env = {
        "HF_ENDPOINT": hub.endpoint,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),  # sigstore's TUF cache: in the test's folder
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "VCACHE_GIVE_UP_SECONDS": "20",
    }
    t0 = time.monotonic()
    done = vcache_process(
        "pull",
        REPO,
        "--cache-dir",
        str(cache_dir),
        "--quiet",
        "--verify-signature",
        "sigstore:release@example.com@https://accounts.google.com",
        env=env,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - t0 < 60
    assert "sigstore" in done.stderr and "network" in done.stderr
    assert hub.body_requests() == []  # nothing was downloaded before the error
    assert CacheRepo(cache_dir, REPO).read_ref("main") is None


def test_a_sigstore_trust_root_that_never_answers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_signing._signing import sign_sigstore

    release = threading.Event()

    def hangs(**_kwargs: Any) -> Any:
        release.wait(30)
        raise AssertionError("not reached in time")

    monkeypatch.setattr(sign_sigstore, "Verifier", hangs)
    t0 = time.monotonic()
    with pytest.raises(TransferError, match=r"did not finish within 0\.2 s"):
        prepare("sigstore:release@example.com@https://accounts.google.com", timeout=0.2)
    assert time.monotonic() - t0 < 5
    release.set()


# -- usage ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "",
        "key",
        "key:",
        "gpg:key.asc",
        " key:pub.pem",
        "sigstore:release@example.com",
        "sigstore:@https://accounts.google.com",
        "sigstore:release@example.com@http://accounts.example.com",
        "key:/nonexistent/pub.pem",
        "BADKEY",
    ],
)
def test_a_bad_method_exits_2_before_anything_is_asked(
    hub: Any, cache_dir: Path, method: str, tmp_path: Path
) -> None:
    if method == "BADKEY":
        (tmp_path / "not-a-key.pem").write_text(
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"
        )
        method = f"key:{tmp_path / 'not-a-key.pem'}"
    res = run(
        "pull",
        "acme/tiny-llama",
        "--cache-dir",
        str(cache_dir),
        "--verify-signature",
        method,
        env={"HF_ENDPOINT": hub.endpoint},
    )
    assert res.exit_code == 2, res.output
    assert res.output.startswith("vcache: error: --verify-signature")
    assert hub.log == []
    with pytest.raises(UsageError):
        prepare(method)


def test_without_the_extra_the_error_names_the_pip_command(
    hub: Any, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, keys: dict[str, KeyPair]
) -> None:
    monkeypatch.setitem(sys.modules, "model_signing", None)  # what `import model_signing` meets when absent
    res = run(
        "pull",
        "acme/tiny-llama",
        "--cache-dir",
        str(cache_dir),
        "--verify-signature",
        key_method(keys["publisher"]),
        env={"HF_ENDPOINT": hub.endpoint},
    )
    assert res.exit_code == 2, res.output
    assert "pip install 'vcache[signing]'" in res.output
    assert hub.log == []


def test_import_vcache_does_not_import_the_signing_library() -> None:
    code = (
        "import sys, vcache, vcache.pull, vcache.signing, vcache.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('model_signing', 'sigstore', 'OpenSSL'))\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_a_method_round_trips_through_its_text(tmp_path: Path) -> None:
    for text in (
        f"key:{tmp_path / 'pub.pem'}",
        f"certificate:{tmp_path / 'chain.pem'}",
        "sigstore:https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main@https://token.actions.githubusercontent.com",
    ):
        method = SignatureMethod.parse(text)
        assert str(method) == text and SignatureMethod.parse(str(method)) == method
    gh = SignatureMethod.parse(
        "sigstore:https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main@https://token.actions.githubusercontent.com"
    )
    assert (
        gh.identity
        and gh.identity.endswith("@refs/heads/main")
        and gh.issuer == "https://token.actions.githubusercontent.com"
    )
