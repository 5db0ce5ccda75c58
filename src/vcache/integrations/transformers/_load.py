"""Loading: the order of steps in the verified ``from_pretrained``, and nothing else.

What this module owns: :func:`from_pretrained` and :func:`load_model` (pull, completeness or its remembered
verdict, refusal or warnings, ``cls.from_pretrained``, after-load check, in that order), which files a load of
each kind of class fetches (:data:`DEFAULT_IGNORE_PATTERNS`, :data:`WEIGHT_PATTERNS`), the config transformers
will use, and which findings block a load (every failure; every warning with ``strict=True``).

What it must never do: judge a checkpoint or a tensor itself (that is ``_completeness`` and ``_after_load``),
word a message (``_messages``), import torch or transformers at import time, or fetch, modify or quarantine
anything other than through ``vcache.pull``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcache.errors import UsageError
from vcache.integrations.transformers._after_load import _scanned_by_pull, check_loaded_model
from vcache.integrations.transformers._completeness import _Completeness, _completeness, _config_unreadable
from vcache.integrations.transformers._messages import (
    _advice,
    _describe_source,
    _emit,
    _headline,
    _pull_refusal,
    _refusal,
    _with_file,
)
from vcache.integrations.transformers._remembered import _RememberedVerdict
from vcache.report import Finding, Severity

if TYPE_CHECKING:
    from vcache.lockfile import Lock
    from vcache.signing import SignatureMethod

#: Files a transformers (PyTorch) load never reads; skipped by default so that, e.g., Llama's ``original/``
#: consolidated checkpoint is not downloaded twice. Pass ``ignore_patterns=()`` to fetch everything.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.mlmodel",
    "*.gguf",
    "original/*",
    "onnx/*",
    "coreml/*",
    "openvino/*",
)

#: Weight files, which a tokenizer, config or processor load never reads: not fetched for those by default.
WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
)


def from_pretrained(
    cls: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    strict: bool = False,
    check_after_load: bool = True,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    allow_patterns: str | Sequence[str] | None = None,
    ignore_patterns: str | Sequence[str] | None = DEFAULT_IGNORE_PATTERNS,
    max_workers: int | None = None,
    verify_signature: str | SignatureMethod | None = None,
    allow_imports: Collection[str] = (),
    lock: str | os.PathLike[str] | Lock | None = None,
    **kwargs: Any,
) -> Any:
    """Pull and verify ``repo_id``, refuse anything incomplete or damaged, then ``cls.from_pretrained`` it.

    ``cls`` is any transformers class with a ``from_pretrained`` classmethod: an ``AutoModel*`` class, a
    concrete model class, ``AutoTokenizer``, ``AutoConfig``, ``AutoProcessor``, ... The steps:

    1. ``vcache.pull`` the snapshot (offline with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``: no
       network, blobs verified from their ledger records). If any file failed, raise
       :class:`~vcache.errors.VerificationFailed` naming the files and findings; nothing is loaded.
    2. For model classes: :func:`check_model_completeness` on the snapshot, from headers only. A missing
       tensor, shard or layer, or a shape mismatch, raises ``VerificationFailed`` before any weight bytes are
       read. A config transformers cannot read (an architecture it does not know) skips the check with a
       warning, so vcache's warnings (or its strict refusal) come before transformers' own error.
    3. ``cls.from_pretrained(<snapshot path>, local_files_only=True, **kwargs)``.
    4. Unless ``check_after_load=False``: :func:`check_loaded_model` (NaN/Inf, all-zero Linear rows).

    Warnings are issued as :class:`~vcache.errors.VcacheWarning` and logged; with ``strict=True`` any warning raises
    ``VerificationFailed`` instead (before loading when it came from steps 1-2). ``strict`` does not change
    what ``pull`` quarantines: a file the publisher shipped with warnings stays in the cache, it just is not
    loaded. ``kwargs`` go to ``cls.from_pretrained`` unchanged (``dtype``, ``device_map``, ``subfolder``,
    ``variant``, ``config``, ``trust_remote_code``, ...).

    By default files that a PyTorch load never reads (:data:`DEFAULT_IGNORE_PATTERNS`; for tokenizers,
    configs and processors also the weight files, :data:`WEIGHT_PATTERNS`) are not fetched; pass
    ``ignore_patterns=None`` to fetch every file of the revision.

    ``verify_signature`` (``"key:PUBLIC_KEY.pem"``, ``"certificate:CHAIN.pem"``, ``"sigstore:IDENTITY@ISSUER"``)
    makes step 1 also require the publisher's model signature (see :func:`vcache.pull`): a missing, invalid,
    untrusted or mismatched signature refuses the load before transformers reads anything.
    PyTorch checkpoints (``pytorch_model.bin``, ``.pt``, ...) are never unpickled by vcache: every global
    their pickle imports must be one ``torch.load(weights_only=True)`` accepts, else the file fails
    (``pickle.unsafe_import``, with or without ``strict``) and nothing is loaded. ``allow_imports``
    (``module.name`` entries) widens that list for a repo you trust.
    ``lock`` (a lockfile path or :class:`~vcache.lockfile.Lock`; default ``VCACHE_LOCK``) pins the load to
    the lock's commit and bytes: step 1 pulls the locked commit and checks every file against the lock's
    sha256 (offline: the cache against the lock), so a cache or server that does not match the lock is
    refused with ``VerificationFailed`` before transformers reads a weight; a signature method the lock
    records for the repo is required as if passed as ``verify_signature``.
    The load registers its use of the repo (:func:`vcache.use`) from the pull until ``cls.from_pretrained``
    returns, so ``vcache gc`` and ``vcache rm`` leave it alone meanwhile.
    """
    from vcache.usage import use

    with use(repo_id, revision, cache_dir=cache_dir):
        return _verified_load(
            cls,
            repo_id,
            revision=revision,
            strict=strict,
            check_after_load=check_after_load,
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            max_workers=max_workers,
            verify_signature=verify_signature,
            allow_imports=allow_imports,
            lock=lock,
            **kwargs,
        )


def _verified_load(
    cls: Any,
    repo_id: str,
    *,
    revision: str | None,
    strict: bool,
    check_after_load: bool,
    cache_dir: str | Path | None,
    endpoint: str | None,
    token: str | bool | None,
    local_files_only: bool,
    allow_patterns: str | Sequence[str] | None,
    ignore_patterns: str | Sequence[str] | None,
    max_workers: int | None,
    verify_signature: str | SignatureMethod | None,
    allow_imports: Collection[str],
    lock: str | os.PathLike[str] | Lock | None,
    **kwargs: Any,
) -> Any:
    """:func:`from_pretrained`'s steps, while its use is registered."""
    if not callable(getattr(cls, "from_pretrained", None)):
        raise UsageError(
            f"{cls!r} has no from_pretrained method; pass a transformers class such as "
            "AutoModelForCausalLM, AutoTokenizer or AutoConfig"
        )
    force_download = bool(kwargs.pop("force_download", False))
    for hub_only in ("proxies", "resume_download"):
        kwargs.pop(hub_only, None)  # meaningless for a verified local snapshot
    from vcache.pull import pull

    model_class = _is_model_class(cls)
    if ignore_patterns is DEFAULT_IGNORE_PATTERNS:
        ignore_patterns = _default_ignore(model_class, kwargs.get("gguf_file"))
    report = pull(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        local_files_only=local_files_only,
        strict=False,  # strictness decides what we load, not what pull quarantines
        max_workers=max_workers,
        force_download=force_download,
        verify_signature=verify_signature,
        allow_imports=allow_imports,
        lock=lock,
    )
    where = _describe_source(repo_id, report)
    cls_name = getattr(cls, "__name__", repr(cls))
    if not report.ok or report.snapshot_path is None:
        raise _pull_refusal(repo_id, where, report)
    pull_warnings = [
        _with_file(f, fr.path) for fr in report.files for f in fr.findings if f.severity is Severity.WARN
    ]
    snapshot = Path(report.snapshot_path)

    completeness = _Completeness()
    if model_class:
        slot = _RememberedVerdict.for_load(cls, report, snapshot, kwargs)
        remembered = slot.lookup() if slot is not None else None
        if remembered is not None:
            completeness = remembered
        else:
            unchanged = slot.folder_state() if slot is not None else None
            subfolder = str(kwargs.get("subfolder") or "")
            # _config_for reads this one when no config is passed (the only case a verdict is remembered for)
            probed = [(snapshot / subfolder if subfolder else snapshot) / "config.json"]
            try:
                config = _config_for(snapshot, kwargs)
            except Exception as exc:  # an architecture transformers does not know, say
                # vcache's findings and a strict refusal come first; transformers raises its own error later
                completeness = _Completeness([_config_unreadable(exc)])
            else:
                completeness = _completeness(
                    snapshot,
                    config,
                    cls,
                    subfolder=subfolder,
                    variant=kwargs.get("variant"),
                    key_mapping=kwargs.get("key_mapping"),
                    use_safetensors=kwargs.get("use_safetensors"),
                    gguf_file=kwargs.get("gguf_file"),
                    trust_remote_code=kwargs.get("trust_remote_code"),
                    config_overrides=_config_overrides(config, kwargs) if "config" not in kwargs else None,
                    probed=probed,
                )
            if slot is not None and unchanged is not None:
                slot.remember(completeness, probed, unchanged)
    before = pull_warnings + completeness.findings
    blocking = [f for f in before if _blocks(f, strict)]
    if blocking:
        raise _refusal(
            f"vcache refused to load {where} with {cls_name}: "
            + _headline(blocking, strict)
            + " Nothing was loaded (transformers read no weights).",
            blocking,
            _advice(blocking, strict),
            repo_id=repo_id,
            report=report,
        )
    _emit(before, where)

    loaded = cls.from_pretrained(str(snapshot), local_files_only=True, **kwargs)

    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
    if check_after_load and _is_torch_module(model):
        seen = {(f.tensor, _kind(f.code)) for f in pull_warnings if f.tensor is not None}
        scanned = _scanned_by_pull(model, completeness.loaded_from, report)
        after = [f for f in check_loaded_model(model, skip=scanned) if (f.tensor, _kind(f.code)) not in seen]
        blocking = [f for f in after if _blocks(f, strict)]
        if blocking:
            raise _refusal(
                f"vcache refused the model loaded from {where} into {cls_name}: "
                + _headline(blocking, strict)
                + " The loaded model was discarded.",
                blocking,
                _advice(blocking, strict),
                repo_id=repo_id,
                report=report,
            )
        _emit(after, where)
    return loaded


def load_model(repo_id: str, **kwargs: Any) -> Any:
    """``from_pretrained(AutoModelForCausalLM, repo_id, **kwargs)``: the verified causal-LM load in one call."""
    from transformers import AutoModelForCausalLM

    return from_pretrained(AutoModelForCausalLM, repo_id, **kwargs)


def _is_model_class(cls: Any) -> bool:
    """True for transformers model classes (concrete or ``AutoModel*``), whose weights the checks concern."""
    if not isinstance(cls, type):
        return False
    from transformers import PreTrainedModel

    if issubclass(cls, PreTrainedModel):
        return True
    try:
        from transformers.models.auto.auto_factory import _BaseAutoModelClass
    except ImportError:
        return cls.__name__.startswith("AutoModel")
    return issubclass(cls, _BaseAutoModelClass)


def _default_ignore(model_class: bool, gguf_file: str | None) -> list[str]:
    """What a load of this kind of class never reads (see :data:`DEFAULT_IGNORE_PATTERNS`)."""
    patterns = [p for p in DEFAULT_IGNORE_PATTERNS if not (gguf_file and p == "*.gguf")]
    return patterns if model_class else patterns + list(WEIGHT_PATTERNS)


def _is_torch_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _config_for(snapshot: Path, kwargs: Mapping[str, Any]) -> Any:
    """The config transformers will use: the one passed, or the snapshot's (from a path, if one is given)."""
    from transformers import AutoConfig, PretrainedConfig

    given = kwargs.get("config")
    if isinstance(given, PretrainedConfig):
        return given
    subfolder = str(kwargs.get("subfolder") or "")
    source = str(given) if given is not None else str(snapshot)
    return AutoConfig.from_pretrained(
        source,
        subfolder=subfolder if given is None else "",
        local_files_only=True,
        trust_remote_code=kwargs.get("trust_remote_code"),
    )


def _config_overrides(config: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments transformers would apply to the config (it sets any kwarg that names an attribute).

    Only integer and boolean attributes matter for which tensors a model has (layer counts, sizes, tying).
    """
    return {
        key: value
        for key, value in kwargs.items()
        if hasattr(config, key)
        and isinstance(value, (int, bool))
        and isinstance(getattr(config, key), (int, bool))
        and getattr(config, key) != value
    }


def _kind(code: str) -> str:
    """``tensor.zero_rows`` and ``model.zero_rows`` are the same kind of finding."""
    return code.rsplit(".", 1)[-1]


def _blocks(finding: Finding, strict: bool) -> bool:
    """Whether ``finding`` refuses the load: every failure, and with ``strict`` every warning too."""
    return finding.severity is Severity.FAIL or (strict and finding.severity is Severity.WARN)
