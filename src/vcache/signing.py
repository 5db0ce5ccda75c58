"""Model signatures: a pulled snapshot checked against its publisher's OpenSSF model signature.

A publisher signs a model folder with the ``model-signing`` package. The signature (``model.sig`` at the repo
root by default) is a sigstore bundle; its DSSE envelope carries an in-toto statement that lists every signed
file with its sha256, and the rules for which files were left out (``docs/signing.md`` describes the format).

What this module owns:

- the ``--verify-signature`` METHOD, :class:`SignatureMethod` (``key:PUBLIC_KEY.pem``,
  ``certificate:CHAIN.pem``, ``sigstore:IDENTITY@ISSUER``), parsed strictly;
- loading what the method trusts and checking the bundle with model-signing's own verifiers
  (:func:`prepare`): the signature, the key, the certificate chain or the sigstore identity;
- comparing the signed manifest with the sha256 the pull already verified for each file
  (:meth:`SignatureCheck.check`). An LFS file's sha256 is the digest its bytes were verified against while
  they were written; a file stored in git (configs, tokenizers: small) is read once more, and that read checks
  its git blob id again while it computes the sha256. No LFS file is read a second time.

Finding codes (every one a failure, so the pull fails and writes no ref):

=======================  ==================================================================================
``signature.missing``    the repo has no signature file at that commit
``signature.invalid``    not a sigstore bundle; its signature does not verify; or its statement is not a
                         model-signing manifest vcache can compare (``files`` serialization, sha256)
``signature.untrusted``  signed by another key, by a certificate that does not chain to the trusted one or
                         may not sign, or by another sigstore identity or issuer
``signature.mismatch``   a file's sha256 differs from the signed one; a signed file is not in the repo; or a
                         file of the snapshot is not signed and no ignore rule of the signature covers it
=======================  ==================================================================================

and ``signature.verified`` (info) on the signature file when everything matched, ``signature.not_checked``
(warning, :func:`not_checked`) when a check that was required could not be made (sigstore offline, in
``vcache verify --lock``).

It must never import ``model_signing`` (or sigstore, cryptography, pyOpenSSL) at import time — ``import vcache``
stays free of them —, report a pass for a check it could not make (sigstore without its trust root is an
error, never a pass), or write anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, TypeVar

from vcache.errors import TransferError, UsageError
from vcache.hashing import Digest, sha256_of_git_file
from vcache.report import FileReport, Finding, PullReport, Verdict, fail, info, warn

log = logging.getLogger(__name__)

__all__ = [
    "INSTALL_HINT",
    "SIGNATURE_FILE",
    "SignatureCheck",
    "SignatureMethod",
    "not_checked",
    "parse_method",
    "prepare",
    "verified_sha256",
]

#: Where model-signing puts the signature, and where vcache looks for it: the repo root.
SIGNATURE_FILE = "model.sig"
#: What installs the optional signing support.
INSTALL_HINT = "pip install 'vcache[signing]'"
#: Paths model-signing leaves out of every signature unless told otherwise (its verifier skips them too).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

Kind = Literal["key", "certificate", "sigstore"]
_KINDS: tuple[Kind, ...] = ("key", "certificate", "sigstore")
_USAGE = (
    "expected key:PUBLIC_KEY.pem, certificate:CHAIN.pem or sigstore:IDENTITY@ISSUER "
    "(for example sigstore:release@example.com@https://accounts.google.com)"
)
_ISSUER = re.compile(r"https://[^\s/@]+(/\S*)?")


@dataclass(frozen=True)
class SignatureMethod:
    """Whom a signature must come from: a public key, a certificate chain, or a sigstore identity.

    ``str()`` gives the METHOD text back and :meth:`parse` reads it, so the method can be stored (say, with a
    pinned revision) and required again later.
    """

    kind: Kind
    path: Path | None = None  # key / certificate: the PEM file
    identity: str | None = None  # sigstore: the signer's identity (an e-mail, a workflow URL)
    issuer: str | None = None  # sigstore: the OpenID Connect issuer that vouched for it

    def __str__(self) -> str:
        if self.kind == "sigstore":
            return f"sigstore:{self.identity}@{self.issuer}"
        return f"{self.kind}:{self.path}"

    def same_trust(self, other: SignatureMethod) -> bool:
        """Whether ``other`` trusts the same thing: the same kind and PEM file (a relative path is taken from
        the working directory), or the same sigstore identity and issuer."""

        def anchor(m: SignatureMethod) -> tuple[str, str | None, str | None, str | None]:
            where = os.path.abspath(m.path.expanduser()) if m.path is not None else None
            return (m.kind, where, m.identity, m.issuer)

        return anchor(self) == anchor(other)

    @classmethod
    def parse(cls, text: str) -> SignatureMethod:
        """Read ``key:PUBLIC_KEY.pem``, ``certificate:CHAIN.pem`` or ``sigstore:IDENTITY@ISSUER``.

        Only the text is checked here (the files are read by :func:`prepare`). A sigstore identity may hold
        ``@`` itself: the issuer is what follows the last one, and must be an ``https://`` URL. Raises
        :class:`UsageError` for anything else.
        """
        kind, sep, rest = text.partition(":")
        if not sep or kind not in _KINDS or not rest.strip() or rest != rest.strip():
            raise UsageError(f"--verify-signature {text!r}: {_USAGE}")
        if kind == "sigstore":
            identity, at, issuer = rest.rpartition("@")
            if not at or not identity or any(c.isspace() for c in identity) or not _ISSUER.fullmatch(issuer):
                raise UsageError(
                    f"--verify-signature {text!r}: a sigstore method is sigstore:IDENTITY@ISSUER, the issuer "
                    "an https:// URL (for example sigstore:release@example.com@https://accounts.google.com)"
                )
            return cls("sigstore", identity=identity, issuer=issuer)
        return cls("key" if kind == "key" else "certificate", path=Path(rest))


def parse_method(value: str | SignatureMethod) -> SignatureMethod:
    """``value`` as a :class:`SignatureMethod` (parsed when it is text; :class:`UsageError` when malformed)."""
    if isinstance(value, SignatureMethod):
        return value
    if not isinstance(value, str):
        raise UsageError(f"verify_signature={value!r}: {_USAGE}")
    return SignatureMethod.parse(value)


class _Refused(Exception):
    """The signature cannot be accepted; ``finding`` says why."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


class _Trust(Protocol):
    """One method's trust anchor: verifies a signature file and returns its signed manifest."""

    describe: str

    def verify(self, signature: Path) -> Any:
        """The model-signing manifest the signature vouches for; raises :class:`_Refused`."""
        ...


def prepare(
    method: str | SignatureMethod, *, signature_file: str = SIGNATURE_FILE, timeout: float | None = None
) -> SignatureCheck:
    """Load what ``method`` trusts, ready to check pulls: called before anything is downloaded.

    Raises :class:`UsageError` (CLI exit 2) for a malformed METHOD, when the optional signing support is not
    installed (the message names ``pip install 'vcache[signing]'``), or when the key or certificate file
    cannot be read or is not one; :class:`TransferError` (exit 3) when sigstore's trust root cannot be fetched
    within ``timeout`` seconds (default: the pull's give-up budget), e.g. without network access.
    """
    m = parse_method(method)
    _require_extra()
    trust: _Trust
    if m.kind == "key":
        trust = _KeyTrust(_pem_path(m))
    elif m.kind == "certificate":
        trust = _CertificateTrust(_pem_path(m))
    else:
        trust = _SigstoreTrust(m, timeout)
    return SignatureCheck(m, trust, signature_file)


def _require_extra() -> None:
    try:
        import model_signing  # noqa: F401 - imports OpenSSL (pyOpenSSL), sigstore and cryptography too
    except ImportError as exc:
        raise UsageError(
            f"--verify-signature needs the optional signing support, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


def _pem_path(m: SignatureMethod) -> Path:
    assert m.path is not None
    path = m.path.expanduser()
    if not path.is_file():
        raise UsageError(f"--verify-signature {m}: {path} is not a file; name the PEM file to trust")
    return path


class SignatureCheck:
    """A loaded trust anchor; :meth:`check` holds a pull's report against the signature in its snapshot."""

    def __init__(self, method: SignatureMethod, trust: _Trust, signature_file: str = SIGNATURE_FILE) -> None:
        self.method = method
        self.signature_file = signature_file
        self._trust = trust

    def check(self, report: PullReport, *, listed: Collection[str] | None = None) -> PullReport:
        """``report`` with the signature's findings attached (see the module docstring for the codes).

        ``listed`` is every path of the repo at the report's commit when known: a signed file outside it is a
        mismatch, while a signed file that is listed but was not pulled (``--include``/``--exclude``) is not
        checked. A report that already failed is returned as it is: its files are not all there to compare.
        """
        if not report.ok or report.snapshot_path is None:
            return report
        where = f"{report.repo_id}@{(report.commit or '')[:12]}"
        files = {fr.path: fr for fr in report.files}
        if self.signature_file not in files:
            return _attach(
                report,
                {
                    self.signature_file: [
                        fail(
                            "signature.missing",
                            f"{where} has no {self.signature_file}: the publisher did not sign this revision "
                            f"with model-signing. Nothing was published as verified (no ref written); ask "
                            "the publisher for a signed revision, or pull without --verify-signature to accept "
                            "it unsigned.",
                            method=str(self.method),
                        )
                    ]
                },
            )
        snapshot = Path(report.snapshot_path)
        try:
            manifest = self._trust.verify(snapshot / self.signature_file)
            signed, ignore = _signed_files(manifest, self.signature_file)
        except _Refused as refused:
            return _attach(report, {self.signature_file: [refused.finding]})
        findings = self._compare(where, signed, ignore, files, verified_sha256(report), listed)
        if findings:
            return _attach(report, findings)
        pulled = sum(1 for name in signed if name in files)
        note = info(
            "signature.verified",
            f"{where}: signed by {self._trust.describe}; the {pulled} signed file(s) pulled match it",
            method=str(self.method),
            signed=len(signed),
            not_pulled=sorted(name for name in signed if name not in files),
        )
        return _attach(report, {self.signature_file: [note]})

    def _compare(
        self,
        where: str,
        signed: Mapping[str, str],
        ignore: tuple[PurePosixPath, ...],
        files: Mapping[str, FileReport],
        known: Mapping[str, Digest | None],
        listed: Collection[str] | None,
    ) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}

        def mismatch(path: str, message: str, **detail: Any) -> None:
            out.setdefault(path, []).append(
                fail("signature.mismatch", message, method=str(self.method), **detail)
            )

        for name, want in sorted(signed.items()):
            if name not in files:
                if listed is not None and name not in listed:
                    mismatch(
                        name,
                        f"{name} is signed, but {where} has no such file: the repo is not the one that was "
                        "signed. Nothing was published as verified; report it to the publisher.",
                        expected=f"sha256:{want}",
                    )
                continue  # listed but left out of this pull: nothing here to compare
            have = known.get(name)
            if have is None:
                mismatch(
                    name,
                    f"{name} changed on disk after it was verified, so its sha256 is not known; pull it again "
                    "with --force and --verify-signature.",
                    expected=f"sha256:{want}",
                )
            elif have.hexdigest != want:
                mismatch(
                    name,
                    f"{name}: its sha256 is {have.hexdigest}, the signature says {want}: the file changed "
                    "after it was signed, or the server sent one the publisher did not sign. Nothing was "
                    "published as verified (no ref written); report it to the publisher or pull a signed "
                    "revision.",
                    expected=f"sha256:{want}",
                    actual=str(have),
                )
        for path in sorted(files):
            if path not in signed and not _ignored(path, ignore):
                mismatch(
                    path,
                    f"{path} is in the snapshot but the signature does not list it, and none of its ignore "
                    f"rules covers it: the publisher did not sign it. Nothing was published as verified; "
                    f"leave it out with --exclude {path!r} if you do not need it.",
                )
        return out


def verified_sha256(report: PullReport) -> dict[str, Digest | None]:
    """The sha256 of every file of ``report`` whose bytes vcache verified, by repo path.

    An LFS file's is its verified digest (nothing is read). A file stored in git is read once: its sha256 is
    computed while its git blob id is checked again on the same bytes; None when they no longer match (it
    changed on disk since) or cannot be read. Files that failed, or were verified without a digest, are
    absent.
    """
    snapshot = Path(report.snapshot_path) if report.snapshot_path else None
    out: dict[str, Digest | None] = {}
    for fr in report.files:
        if fr.verdict is Verdict.FAIL or fr.digest is None:
            continue
        try:
            digest = Digest.parse(fr.digest)
        except ValueError:
            continue
        if digest.algorithm == "sha256":
            out[fr.path] = digest
            continue
        location = fr.location or (str(snapshot / fr.path) if snapshot is not None else None)
        if location is None:
            continue
        try:
            out[fr.path] = sha256_of_git_file(location, digest)
        except OSError:
            out[fr.path] = None
    return out


def not_checked(report: PullReport, method: SignatureMethod, message: str) -> PullReport:
    """``report`` with a ``signature.not_checked`` warning on the signature file: ``method`` was required but
    could not be checked (``message`` says why and how to check it), so the report never reads as a pass of
    it."""
    finding = warn("signature.not_checked", message, method=str(method))
    return _attach(report, {SIGNATURE_FILE: [finding]})


def _attach(report: PullReport, findings: Mapping[str, list[Finding]]) -> PullReport:
    """``report`` with ``findings`` added to the named files' reports (a report is made for a path it lacks)."""
    files = list(report.files)
    index = {fr.path: i for i, fr in enumerate(files)}
    for path, extra in findings.items():
        if path in index:
            fr = files[index[path]]
            files[index[path]] = replace(fr, findings=fr.findings + tuple(extra))
        else:
            files.append(FileReport(path, findings=tuple(extra), strict=report.strict))
    return replace(report, files=tuple(files))


def _signed_files(manifest: Any, signature_file: str) -> tuple[dict[str, str], tuple[PurePosixPath, ...]]:
    """The manifest's files (path -> sha256 hex) and the ignore rules that apply, or :class:`_Refused`."""
    serialization = manifest.serialization_type
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise _Refused(
            fail(
                "signature.invalid",
                f"{signature_file} was made with model-signing's {method!r} serialization and {hash_type!r} "
                "hashes; vcache compares only the default one (files, sha256) with the digests it verified. "
                "Ask the publisher to sign with the defaults.",
                serialization=dict(serialization),
            )
        )
    signed: dict[str, str] = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise _Refused(
                fail(
                    "signature.invalid",
                    f"{signature_file}: {rd.identifier} is signed with {rd.digest.algorithm}",
                )
            )
        signed[str(rd.identifier)] = str(rd.digest.digest_hex)
    rules = [*serialization.get("ignore_paths", ()), *GIT_PATHS, signature_file]
    ignore = tuple(p for p in (PurePosixPath(str(r)) for r in rules) if _sane_rule(p))
    return signed, ignore


def _sane_rule(rule: PurePosixPath) -> bool:
    """An ignore rule that names something inside the repo: not ``.``, absolute, or through ``..``."""
    return bool(rule.parts) and not rule.is_absolute() and ".." not in rule.parts


def _ignored(path: str, ignore: tuple[PurePosixPath, ...]) -> bool:
    """model-signing's rule: a path is left out when it is an ignored path or lies under one."""
    p = PurePosixPath(path)
    return any(p.is_relative_to(rule) for rule in ignore)


def _read_bundle(reader: Callable[[Path], Any], path: Path) -> Any:
    try:
        return reader(path)
    except OSError as exc:
        raise _Refused(fail("signature.invalid", f"{path.name} cannot be read: {exc}")) from exc
    except Exception as exc:  # malformed JSON or bundle: every parser error the library has
        raise _Refused(
            fail("signature.invalid", f"{path.name} is not a sigstore bundle model-signing can read: {exc}")
        ) from exc


def _manifest_of(verify: Callable[[], Any], path: Path, signer: str) -> Any:
    """Run model-signing's verification of the signed content; its failures are ``signature.invalid``."""
    from cryptography.exceptions import InvalidSignature

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # it prints a warning for an old bundle format: not to stdout
            return verify()
    except InvalidSignature as exc:
        raise _Refused(
            fail(
                "signature.invalid",
                f"{path.name} does not verify with {signer}: the signed statement was changed after signing, "
                "or another key made the signature",
            )
        ) from exc
    except Exception as exc:
        raise _Refused(
            fail("signature.invalid", f"{path.name} is not a valid model-signing signature: {exc}")
        ) from exc
    finally:
        if out.getvalue().strip():
            log.warning("model-signing: %s", out.getvalue().strip())


class _KeyTrust:
    """A public key (an elliptic curve one, as model-signing signs with)."""

    def __init__(self, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from model_signing._signing import sign_ec_key

        try:
            self._verifier = sign_ec_key.Verifier(path)
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise UsageError(f"--verify-signature key:{path}: cannot read it ({exc.strerror})") from exc
        except Exception as exc:
            raise UsageError(
                f"--verify-signature key:{path}: not a PEM elliptic-curve public key (P-256, P-384 or P-521) "
                f"that model-signing verifies with ({exc})"
            ) from exc
        spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        # model-signing names the signing key in the bundle by this hash of its PEM form.
        self._hint = hashlib.sha256(spki).hexdigest()
        self.describe = f"the key {path} (sha256 {self._hint[:16]}…)"

    def verify(self, signature: Path) -> Any:
        """The signed manifest, when ``signature`` was made by this key."""
        from model_signing._signing import sign_sigstore_pb

        bundle = _read_bundle(sign_sigstore_pb.Signature.read, signature)
        material = bundle.bundle.verification_material
        if material.public_key is None:
            raise _Refused(
                fail(
                    "signature.untrusted",
                    f"{signature.name} was made with a certificate, not with a bare key: verify it with "
                    "--verify-signature certificate:CHAIN.pem or sigstore:IDENTITY@ISSUER",
                )
            )
        hint = material.public_key.hint
        if hint and hint != self._hint:
            raise _Refused(
                fail(
                    "signature.untrusted",
                    f"{signature.name} was signed by another key (sha256 {hint[:16]}…), not by "
                    f"{self.describe}. Nothing was published as verified; check which key the publisher "
                    "signs with.",
                    key=hint,
                )
            )
        return _manifest_of(lambda: self._verifier.verify(bundle), signature, self.describe)


class _CertificateTrust:
    """A certificate chain (PEM): the signing certificate must chain to it and be allowed to sign."""

    def __init__(self, path: Path) -> None:
        from model_signing._signing import sign_certificate

        try:
            self._verifier = sign_certificate.Verifier([path])
        except OSError as exc:
            raise UsageError(
                f"--verify-signature certificate:{path}: cannot read it ({exc.strerror})"
            ) from exc
        except Exception as exc:
            raise UsageError(
                f"--verify-signature certificate:{path}: not a PEM certificate chain ({exc})"
            ) from exc
        self._path = path
        self.describe = f"a certificate issued under {path}"

    def verify(self, signature: Path) -> Any:
        """The signed manifest, when ``signature`` was made by a certificate that chains to the trusted ones."""
        from model_signing._signing import sign_sigstore_pb

        bundle = _read_bundle(sign_sigstore_pb.Signature.read, signature)
        material = bundle.bundle.verification_material
        chain = material.x509_certificate_chain
        if chain is None or not chain.certificates:
            raise _Refused(
                fail(
                    "signature.untrusted",
                    f"{signature.name} carries no certificate chain (it was signed with a bare key or through "
                    "sigstore): verify it with --verify-signature key:PUBLIC_KEY.pem or sigstore:IDENTITY@ISSUER",
                )
            )
        try:
            self._verifier._verify_certificates(material)  # the chain and the leaf's permission to sign
        except Exception as exc:
            raise _Refused(
                fail(
                    "signature.untrusted",
                    f"{signature.name}: its signing certificate does not chain to {self._path}, or may not "
                    f"sign ({exc})",
                )
            ) from exc
        return _manifest_of(lambda: self._verifier.verify(bundle), signature, "its signing certificate")


class _SigstoreTrust:
    """A sigstore identity and issuer, checked against sigstore's public trust root (fetched: network)."""

    def __init__(self, m: SignatureMethod, timeout: float | None) -> None:
        from model_signing._signing import sign_sigstore

        assert m.identity is not None and m.issuer is not None
        identity, issuer = self._identity, self._issuer = m.identity, m.issuer
        self.describe = f"{m.identity} (issuer {m.issuer}, through sigstore)"
        if timeout is None:
            from vcache.config import give_up_seconds

            timeout = give_up_seconds()
        self._verifier = _within(
            timeout,
            lambda: sign_sigstore.Verifier(identity=identity, oidc_issuer=issuer),
            "fetching sigstore's trust root (its TUF repository)",
        )

    def verify(self, signature: Path) -> Any:
        """The signed manifest, when sigstore vouches that the identity and issuer made ``signature``."""
        from model_signing._signing import sign_sigstore
        from sigstore.errors import VerificationError
        from sigstore.verify.policy import Identity

        bundle = _read_bundle(sign_sigstore.Signature.read, signature)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return self._verifier.verify(bundle)
        except VerificationError as exc:
            try:
                Identity(identity=self._identity, issuer=self._issuer).verify(
                    bundle.bundle.signing_certificate
                )
            except Exception as policy:
                raise _Refused(
                    fail(
                        "signature.untrusted",
                        f"{signature.name} was not signed by {self.describe}: {policy}",
                    )
                ) from exc
            raise _Refused(fail("signature.invalid", f"{signature.name} does not verify: {exc}")) from exc
        except Exception as exc:
            raise _Refused(
                fail("signature.invalid", f"{signature.name} is not a valid model-signing signature: {exc}")
            ) from exc


T = TypeVar("T")


def _within(seconds: float, work: Callable[[], T], what: str) -> T:
    """``work()`` in a thread, given ``seconds``: a network step that may hang gets a bound. Its failure, or
    no answer in time, is a :class:`TransferError` (the check cannot be made: never a pass)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="vcache-sigstore", daemon=True)
    worker.start()
    worker.join(seconds)
    advice = (
        "sigstore verification needs network access to sigstore's trust root; nothing was downloaded. "
        "Verify offline with key:PUBLIC_KEY.pem or certificate:CHAIN.pem if the publisher offers them"
    )
    if worker.is_alive():
        raise TransferError(f"{what} did not finish within {seconds:g} s; {advice}")
    if "error" in box:
        exc = box["error"]
        raise TransferError(f"{what} failed ({_root_cause(exc)}); {advice}") from exc
    value: T = box["value"]
    return value


def _root_cause(exc: BaseException) -> str:
    """The error and the deepest cause with something to say (a library's wrapper often says nothing)."""
    seen: list[BaseException] = [exc]
    while len(seen) < 8:
        nxt = seen[-1].__cause__ or seen[-1].__context__
        if nxt is None or nxt in seen:
            break
        seen.append(nxt)
    said = [str(e) for e in seen if str(e)]
    if not said:
        return type(exc).__name__
    return said[0] if len(said) == 1 else f"{said[0]}: {said[-1]}"
