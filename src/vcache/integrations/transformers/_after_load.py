"""After-load checks: NaN/Inf in the loaded parameters, all-zero rows in ``nn.Linear`` weights.

What this module owns: :func:`check_loaded_model` and its ``model.nan`` / ``model.inf`` / ``model.zero_rows``
findings (the DoRA hazard, :data:`DORA_HAZARD`, is named in each zero-row finding), and
:func:`_scanned_by_pull`: which parameters hold exactly the bytes the pull's content scan already judged, so
they are not checked twice.

What it must never do: hold a temporary the size of a parameter (row sums first, flagged rows re-checked in
bounded chunks), modify a parameter, import torch or transformers at import time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from vcache.integrations.transformers._messages import _INDEX_LIMIT, _count
from vcache.report import Finding, PullReport, warn

if TYPE_CHECKING:
    import torch

#: What all-zero rows in a Linear weight break, said in every ``model.zero_rows`` finding.
DORA_HAZARD = "PEFT DoRA divides by this weight's row norm; these rows give NaN at adapter initialisation"

#: Rows re-checked exactly at a time when a cheap row sum flagged them.
_ROW_CHUNK = 1024
#: Elements counted at a time when a parameter holds NaN/Inf (bounds the temporaries).
_ELEMENT_CHUNK = 1 << 22
#: Parameters up to this size that need only the NaN/Inf check are checked together (see check_loaded_model).
_BATCH_ELEMENTS = 1 << 16


def check_loaded_model(model: Any, *, skip: Collection[str] = ()) -> list[Finding]:
    """Check a loaded model's weights: NaN/Inf in any parameter, all-zero rows in every ``nn.Linear`` weight.

    Findings (all warnings; ``from_pretrained(strict=True)`` turns them into a refusal):

    - ``model.nan`` / ``model.inf``: counts and the first flat indexes of the parameter.
    - ``model.zero_rows``: a Linear weight (``[out, in]``) with rows that are exactly zero, with the count, the
      first row indexes and what that breaks: :data:`DORA_HAZARD`.

    Cheap: one row-sum reduction per parameter (no temporary the size of the tensor); only rows the sum flags
    (zero or non-finite) are re-checked exactly. Small parameters that need only the NaN/Inf check (norms,
    biases) are first checked together, elementwise, in bounded runs; only a run with a NaN/Inf is checked
    parameter by parameter, so the findings are the same. Parameters on the meta device (offloaded), non-floating
    (quantized) parameters and the names in ``skip`` (values already scanned elsewhere, e.g. by the pull's
    content scan of the very same bytes) are not checked.
    """
    import torch

    linear_weights: set[int] | None = None  # found on the first 2-D parameter (none may need it)
    found: list[list[Finding]] = []  # per checked parameter, in named_parameters order
    # Small parameters that only need the NaN/Inf check (norms, biases), by (device, dtype): one elementwise
    # isfinite over all of them. A row with a NaN/Inf always has a non-finite sum, so when none of their
    # elements is NaN/Inf the per-parameter check finds nothing; otherwise each one is checked on its own.
    small: dict[tuple[Any, Any], list[tuple[int, str, torch.Tensor]]] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (
                name in skip
                or param.device.type == "meta"
                or not param.is_floating_point()
                or param.numel() == 0
            ):
                continue
            t = param.detach()
            if t.dim() == 2 and linear_weights is None:
                linear_weights = {
                    id(module.weight)
                    for module in model.modules()
                    if isinstance(module, torch.nn.Linear) and getattr(module, "weight", None) is not None
                }
            is_linear = t.dim() == 2 and linear_weights is not None and id(param) in linear_weights
            found.append([])
            if not is_linear and t.numel() <= _BATCH_ELEMENTS:
                small.setdefault((t.device, t.dtype), []).append((len(found) - 1, name, t))
            else:
                found[-1] = _parameter_findings(name, t, is_linear)
        for group in _chunks(small.values(), _ELEMENT_CHUNK):
            try:
                clean = bool(torch.isfinite(torch.cat([t.reshape(-1) for _, _, t in group])).all())
            except (RuntimeError, TypeError):  # a tensor subclass that does not concatenate
                clean = False
            if not clean:
                for position, name, t in group:
                    found[position] = _parameter_findings(name, t, False)
    return [f for findings in found for f in findings]


def _chunks(
    groups: Iterable[list[tuple[int, str, torch.Tensor]]], limit: int
) -> Iterator[list[tuple[int, str, torch.Tensor]]]:
    """Each group cut into runs of at most ``limit`` elements (bounds the concatenated temporary)."""
    for group in groups:
        run: list[tuple[int, str, torch.Tensor]] = []
        size = 0
        for item in group:
            n = item[2].numel()
            if run and size + n > limit:
                yield run
                run, size = [], 0
            run.append(item)
            size += n
        if run:
            yield run


def _parameter_findings(name: str, t: torch.Tensor, is_linear: bool) -> list[Finding]:
    """NaN/Inf in one parameter, and all-zero rows when it is a Linear weight."""
    import torch

    findings: list[Finding] = []
    rows = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    sums = rows.sum(dim=1)  # NaN/Inf propagate; an all-zero row sums to exactly zero
    if not bool(torch.isfinite(sums).all()):
        findings += _nonfinite_findings(name, t, rows, (~torch.isfinite(sums)).nonzero().flatten())
    if is_linear:
        candidates = (sums == 0).nonzero().flatten()
        if candidates.numel():
            zero = _exactly_zero_rows(rows, candidates)
            if zero:
                findings.append(_zero_rows_finding(name, zero, rows.shape[0], rows.shape[1]))
    return findings


def _exactly_zero_rows(rows: torch.Tensor, candidates: torch.Tensor) -> list[int]:
    import torch

    zero: list[int] = []
    for start in range(0, candidates.numel(), _ROW_CHUNK):
        idx = candidates[start : start + _ROW_CHUNK]
        nonzero = torch.count_nonzero(rows.index_select(0, idx), dim=1)
        zero += idx[nonzero == 0].tolist()
    return zero


def _nonfinite_findings(
    name: str, t: torch.Tensor, rows: torch.Tensor, bad_rows: torch.Tensor
) -> list[Finding]:
    """Exact NaN/Inf counts over the rows a sum flagged (an fp16 sum can overflow without any Inf present)."""
    import torch

    width = rows.shape[1]
    step = max(1, _ELEMENT_CHUNK // max(width, 1))
    counts = {"nan": 0, "inf": 0}
    first: dict[str, list[int]] = {"nan": [], "inf": []}
    for start in range(0, bad_rows.numel(), step):
        idx = bad_rows[start : start + step]
        block = rows.index_select(0, idx)
        for kind, mask in (("nan", torch.isnan(block)), ("inf", torch.isinf(block))):
            hits = mask.nonzero()
            counts[kind] += int(hits.shape[0])
            room = _INDEX_LIMIT - len(first[kind])
            if room > 0 and hits.numel():
                first[kind] += (idx[hits[:room, 0]] * width + hits[:room, 1]).tolist()
    nan_count, inf_count = counts["nan"], counts["inf"]
    nan_at, inf_at = first["nan"], first["inf"]
    out: list[Finding] = []
    shape = list(t.shape)
    if nan_count:
        out.append(
            warn(
                "model.nan",
                f"{name} (shape {shape}) holds {_count(nan_count, 'NaN value')} (first at flat indexes {nan_at}); every "
                "forward pass through it produces NaN. The checkpoint is damaged: pull it again, and if the "
                "publisher's file has them, tell the publisher.",
                tensor=name,
                count=nan_count,
                first_indexes=nan_at,
                shape=shape,
            )
        )
    if inf_count:
        out.append(
            warn(
                "model.inf",
                f"{name} (shape {shape}) holds {_count(inf_count, 'infinite value')} (first at flat indexes {inf_at}); "
                "unless this parameter is a mask, outputs through it will overflow to Inf/NaN. Pull it again, and "
                "if the publisher's file has them, tell the publisher.",
                tensor=name,
                count=inf_count,
                first_indexes=inf_at,
                shape=shape,
            )
        )
    return out


def _zero_rows_finding(name: str, zero: list[int], n_rows: int, width: int) -> Finding:
    zero.sort()
    first = zero[:_INDEX_LIMIT]
    more = f", ... ({len(zero) - len(first)} more)" if len(zero) > len(first) else ""
    return warn(
        "model.zero_rows",
        f"{name} ({n_rows}x{width}): {len(zero)} of {n_rows} rows are all zero (rows "
        f"{', '.join(map(str, first))}{more}). {DORA_HAZARD}. Some checkpoints ship such rows on purpose "
        "(padding or reserved tokens); if this one should not, its file is damaged: pull again, or tell the "
        "publisher. Until then keep this module out of DoRA's target_modules.",
        tensor=name,
        count=len(zero),
        rows=n_rows,
        first_rows=first,
    )


#: safetensors dtype names of the torch dtypes whose bytes a load can pass through unchanged.
_SAFETENSORS_DTYPE = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


#: (stored, loaded) dtype pairs whose cast cannot turn finite values into Inf/NaN nor a row with a normal
#: number into an all-zero row: widening casts, and fp32 -> bf16 (same exponent range; only values below
#: ~1e-40 can round to zero). Casts to fp16 are not here: |x| > 65504 overflows to Inf, |x| < 6e-8 to zero.
_PRESERVING_CASTS = {
    ("F32", "BF16"),
    ("BF16", "F32"),
    ("F16", "F32"),
    ("F16", "BF16"),
    ("F32", "F64"),
    ("BF16", "F64"),
    ("F16", "F64"),
}


def _scanned_by_pull(model: Any, loaded_from: Mapping[str, tuple[str, str]], report: PullReport) -> set[str]:
    """Parameters whose values the pull's content scan already judged (and whose findings were emitted).

    A parameter qualifies when transformers loaded it by a plain rename from a safetensors tensor (no fusing
    or splitting), in the stored dtype or through a cast in :data:`_PRESERVING_CASTS`, the scan covered that
    tensor (no ``tensor.unchecked``), and the scan's row check applies to its name. Everything else (casts to
    fp16, which can overflow to Inf; converted, initialised or tied-from-elsewhere tensors) is checked after
    load.
    """
    try:
        from vcache.checks.tensors import LEGIT_ZERO_NAME
    except ImportError:
        return set()
    unchecked = {
        f.tensor for fr in report.files for f in fr.findings if f.code == "tensor.unchecked" and f.tensor
    }
    scanned: set[str] = set()
    for name, param in model.named_parameters():
        source = loaded_from.get(name)
        if source is None or source[0] in unchecked or LEGIT_ZERO_NAME.search(name):
            continue
        loaded = _SAFETENSORS_DTYPE.get(str(param.dtype).removeprefix("torch."))
        if loaded == source[1] or (source[1], loaded) in _PRESERVING_CASTS:
            scanned.add(name)
    return scanned
