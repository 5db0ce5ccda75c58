"""Pickle opcode walking: what a pickle would import and call, found without running it.

This module owns the reading of a pickle stream as inert data. It walks the opcodes with the standard
library's ``pickletools.genops`` and replays them on a symbolic stack (:func:`walk_pickle`): strings, numbers,
tuples, lists and dicts are rebuilt as values, while every import becomes a :class:`Global`, every call a
:class:`Call`, and every persistent id a :class:`PersistentRef`. So ``STACK_GLOBAL`` is resolved from the
strings actually on the stack (through ``MEMOIZE``/``BINGET`` too), and a caller can read the object tree a
loader would build (``torch.save``'s storages and tensors) without building it. It then judges the imports
against :data:`WEIGHTS_ONLY_GLOBALS`, the names ``torch.load(weights_only=True)`` accepts
(:func:`import_findings`).

It must never execute a pickle: it never calls ``pickle.load``/``Unpickler``, never imports a module a pickle
names, and never imports torch. It never allocates by a size the stream claims (reads are bounded by the bytes
that exist and by :data:`MAX_VALUE_BYTES`; long strings are kept only as their length), and never raises on bad
input: a malformed stream is a result (:attr:`PickleWalk.error`) and then a finding. Which file formats carry
pickles, and where, is ``checks/pytorch.py``.

Finding codes (all ``fail``):

===========================  ================================================================================
``pickle.unsafe_import``     a global outside the allowlist (``os.system``, ``builtins.eval``, ``subprocess.*``,
                             classes of other libraries): every offending name is listed
``pickle.unresolved_import``  an import that cannot be named without running the pickle: ``STACK_GLOBAL`` whose
                             module or name is not a string on the stack, or an ``EXT1/2/4`` extension code
``pickle.unsafe_call``       ``REDUCE``/``NEWOBJ``/``OBJ`` calling something other than an imported global (a
                             value computed while loading), or ``BUILD``/``APPEND``/``SETITEM`` aimed at an
                             imported class itself (which would set or call class attributes)
``pickle.invalid``           not a well-formed pickle (unknown opcode, truncated argument, stack underflow, a
                             memo key never stored, no ``STOP``): every loader refuses it
``pickle.too_large``         more than :data:`MAX_OPCODES` opcodes, or one value over :data:`MAX_VALUE_BYTES`:
                             the walk stopped, so the imports after that point were not checked
===========================  ================================================================================

One more, ``info``: ``pickle.allowed_import`` lists the globals outside the allowlist that passed only because
the caller allowed them (``allow_imports``), so a verdict that relied on them says so (and a remembered one is
not trusted by a caller that does not allow them: :func:`allowlist_agrees`).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final, Protocol, cast

from vcache.report import Finding, fail, info

__all__ = [
    "MAX_OPCODES",
    "MAX_VALUE_BYTES",
    "NEVER_ALLOWED_GLOBALS",
    "NEVER_ALLOWED_MODULES",
    "WEIGHTS_ONLY_GLOBALS",
    "Call",
    "Global",
    "Opaque",
    "PersistentRef",
    "PickleDict",
    "PickleSet",
    "PickleWalk",
    "UnsafeCall",
    "allowlist_agrees",
    "import_allowed",
    "import_findings",
    "parse_allow_imports",
    "walk_pickle",
]

#: Every global ``torch.load(weights_only=True)`` accepts by default: ``_get_allowed_globals()`` in
#: ``torch/_weights_only_unpickler.py`` of torch 2.13.0, written out (this module never imports torch).
#: OrderedDict/Counter, the tensor rebuild functions, storage and tensor classes, dtypes, quantization schemes,
#: ``torch.device``/``torch.Size``, ``_codecs.encode`` (how protocol 2 pickles bytes) and three builtins.
WEIGHTS_ONLY_GLOBALS: Final[frozenset[str]] = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.BFloat16Storage",
        "torch.BFloat16Tensor",
        "torch.BoolStorage",
        "torch.BoolTensor",
        "torch.ByteStorage",
        "torch.ByteTensor",
        "torch.CharStorage",
        "torch.CharTensor",
        "torch.ComplexDoubleStorage",
        "torch.ComplexFloatStorage",
        "torch.DoubleStorage",
        "torch.DoubleTensor",
        "torch.FloatStorage",
        "torch.FloatTensor",
        "torch.HalfStorage",
        "torch.HalfTensor",
        "torch.IntStorage",
        "torch.IntTensor",
        "torch.LongStorage",
        "torch.LongTensor",
        "torch.QInt32Storage",
        "torch.QInt8Storage",
        "torch.QUInt2x4Storage",
        "torch.QUInt4x2Storage",
        "torch.QUInt8Storage",
        "torch.ShortStorage",
        "torch.ShortTensor",
        "torch.Size",
        "torch.Tensor",
        "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_wrapper_subclass",
        "torch.bfloat16",
        "torch.bits16",
        "torch.bits1x8",
        "torch.bits2x4",
        "torch.bits4x2",
        "torch.bits8",
        "torch.bool",
        "torch.complex128",
        "torch.complex32",
        "torch.complex64",
        "torch.cuda.BFloat16Storage",
        "torch.cuda.BFloat16Tensor",
        "torch.cuda.BoolStorage",
        "torch.cuda.BoolTensor",
        "torch.cuda.ByteStorage",
        "torch.cuda.ByteTensor",
        "torch.cuda.CharStorage",
        "torch.cuda.CharTensor",
        "torch.cuda.ComplexDoubleStorage",
        "torch.cuda.ComplexFloatStorage",
        "torch.cuda.DoubleStorage",
        "torch.cuda.DoubleTensor",
        "torch.cuda.FloatStorage",
        "torch.cuda.FloatTensor",
        "torch.cuda.HalfStorage",
        "torch.cuda.HalfTensor",
        "torch.cuda.IntStorage",
        "torch.cuda.IntTensor",
        "torch.cuda.LongStorage",
        "torch.cuda.LongTensor",
        "torch.cuda.ShortStorage",
        "torch.cuda.ShortTensor",
        "torch.cuda.sparse.BFloat16Tensor",
        "torch.cuda.sparse.ByteTensor",
        "torch.cuda.sparse.CharTensor",
        "torch.cuda.sparse.DoubleTensor",
        "torch.cuda.sparse.FloatTensor",
        "torch.cuda.sparse.HalfTensor",
        "torch.cuda.sparse.IntTensor",
        "torch.cuda.sparse.LongTensor",
        "torch.cuda.sparse.ShortTensor",
        "torch.device",
        "torch.float16",
        "torch.float32",
        "torch.float4_e2m1fn_x2",
        "torch.float64",
        "torch.float8_e4m3fn",
        "torch.float8_e4m3fnuz",
        "torch.float8_e5m2",
        "torch.float8_e5m2fnuz",
        "torch.float8_e8m0fnu",
        "torch.int1",
        "torch.int16",
        "torch.int2",
        "torch.int3",
        "torch.int32",
        "torch.int4",
        "torch.int5",
        "torch.int6",
        "torch.int64",
        "torch.int7",
        "torch.int8",
        "torch.nn.parameter.Parameter",
        "torch.per_channel_affine",
        "torch.per_channel_affine_float_qparams",
        "torch.per_channel_symmetric",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.qint32",
        "torch.qint8",
        "torch.quint2x4",
        "torch.quint4x2",
        "torch.quint8",
        "torch.serialization._get_layout",
        "torch.sparse.BFloat16Tensor",
        "torch.sparse.ByteTensor",
        "torch.sparse.CharTensor",
        "torch.sparse.DoubleTensor",
        "torch.sparse.FloatTensor",
        "torch.sparse.HalfTensor",
        "torch.sparse.IntTensor",
        "torch.sparse.LongTensor",
        "torch.sparse.ShortTensor",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.uint1",
        "torch.uint16",
        "torch.uint2",
        "torch.uint3",
        "torch.uint32",
        "torch.uint4",
        "torch.uint5",
        "torch.uint6",
        "torch.uint64",
        "torch.uint7",
        "torch.uint8",
    }
)

#: Modules whose globals stay refused whatever ``allow_imports`` says: torch's own blocklist (``sys``, ``os``,
#: ``posix``, ``nt``) plus the other standard ways to run a command or code. Submodules are refused too.
NEVER_ALLOWED_MODULES: Final[frozenset[str]] = frozenset(
    {"sys", "os", "posix", "nt", "subprocess", "runpy", "importlib", "pty", "ctypes", "code", "marshal"}
)

#: Single globals refused whatever ``allow_imports`` says: the builtins that evaluate code or reach arbitrary
#: attributes.
NEVER_ALLOWED_GLOBALS: Final[frozenset[str]] = frozenset(
    {
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.__import__",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "builtins.open",
        "builtins.breakpoint",
        "builtins.globals",
        "builtins.vars",
    }
)

MAX_OPCODES: Final = 5_000_000
"""A walk stops (``pickle.too_large``) after this many opcodes; a state dict of 100,000 tensors needs ~2 M."""

MAX_VALUE_BYTES: Final = 256 << 20
"""One string/bytes argument longer than this stops the walk (``pickle.too_large``): it is never read."""

_KEEP_CHARS: Final = 4096  # longer strings are kept only as their length
_KEEP_BUDGET: Final = 64 << 20  # total characters of strings kept per walk
_MAX_LINE: Final = 1 << 20  # protocol-0 text arguments end with a newline within this many bytes
_LIST_LIMIT: Final = 200  # offending names shown in a message (the detail lists every one)
# How CPython names os.system and friends in a pickle: the platform module the function really lives in.
_OS_ALIASES: Final = {"posix": "os", "nt": "os"}


# --------------------------------------------------------------------------------------------------------
# The symbolic values.


@dataclass(frozen=True)
class Global:
    """An import the pickle makes (``GLOBAL``, ``STACK_GLOBAL``, ``INST``): ``module.name`` after the
    Python 2 renames the unpickler applies (``__builtin__`` is ``builtins``); ``written`` is the name as in
    the stream; ``offset`` is the opcode's position."""

    module: str
    name: str
    written: str
    offset: int | None

    @property
    def full(self) -> str:
        """``module.name``."""
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    """The result of calling ``func`` with ``args`` (``REDUCE``, ``NEWOBJ``, ``OBJ``, ``INST``), with what
    ``BUILD`` (``state``), ``SETITEM(S)`` (``items``) and ``APPEND(S)``/``ADDITEMS`` (``appended``) add."""

    func: Any
    args: Any
    opcode: str
    offset: int | None
    state: Any = None
    items: list[tuple[Any, Any]] = field(default_factory=list)
    appended: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class PickleDict:
    """A dict, as its (key, value) pairs in insertion order (keys may be unhashable symbolic values)."""

    items: list[tuple[Any, Any]] = field(default_factory=list)


@dataclass(eq=False)
class PickleSet:
    """A set (``EMPTY_SET``/``ADDITEMS``) or frozenset (``FROZENSET``), as its items."""

    items: list[Any] = field(default_factory=list)
    frozen: bool = False


@dataclass(frozen=True)
class PersistentRef:
    """A ``PERSID``/``BINPERSID`` reference: ``pid`` is the value the loader's ``persistent_load`` gets."""

    pid: Any
    offset: int | None


@dataclass(frozen=True)
class Opaque:
    """A value not kept: a long string (``kind`` ``str``/``bytes``, ``size`` its length), an out-of-band
    buffer, or an import that could not be resolved (``kind`` ``global``)."""

    kind: str
    size: int = 0


@dataclass(frozen=True)
class UnsafeCall:
    """A call or mutation aimed at something the allowlist cannot vouch for."""

    opcode: str
    offset: int | None
    what: str


@dataclass(frozen=True)
class PickleWalk:
    """What one pickle holds, from its first opcode to its ``STOP`` (or to where it broke).

    ``imports`` has one :class:`Global` per import opcode, in stream order; ``persistent_ids`` one
    :class:`PersistentRef` per persistent-id opcode. ``root`` is the value ``STOP`` returns (``None`` when the
    walk did not get there). ``end`` is the stream position after the last opcode read. ``error`` says why
    the stream is not a well-formed pickle; ``too_large`` why the walk stopped early.
    """

    imports: tuple[Global, ...] = ()
    unresolved: tuple[tuple[int | None, str], ...] = ()
    unsafe_calls: tuple[UnsafeCall, ...] = ()
    persistent_ids: tuple[PersistentRef, ...] = ()
    root: Any = None
    start: int = 0
    end: int = 0
    protocol: int | None = None
    opcodes: int = 0
    error: str | None = None
    too_large: str | None = None

    @property
    def complete(self) -> bool:
        """The walk reached ``STOP``: every import of this pickle is in :attr:`imports`."""
        return self.error is None and self.too_large is None


# --------------------------------------------------------------------------------------------------------
# Reading a stream without trusting its sizes.


class _Stream(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...
    def readline(self, limit: int = -1, /) -> bytes: ...
    def tell(self) -> int: ...


class _TooLarge(Exception):
    pass


class _Malformed(Exception):
    pass


class _Bounded:
    """A read-only view of ``stream`` that never asks it for more bytes than remain (``available``), for
    one value more than :data:`MAX_VALUE_BYTES`, or for a line longer than ``_MAX_LINE``.

    ``pickletools`` reads an argument with ``read(n)`` for the length the stream claims; a buffered file
    would allocate ``n`` bytes before finding out they are not there.
    """

    def __init__(self, stream: _Stream, available: int) -> None:
        self._stream = stream
        self._start = stream.tell()
        self._available = available

    def _left(self) -> int:
        return max(0, self._available - (self._stream.tell() - self._start))

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        if n < 0:
            n = left
        if n > MAX_VALUE_BYTES and left >= n:
            raise _TooLarge(f"a value of {n:,} bytes")
        return self._stream.read(min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        cap = min(_MAX_LINE, self._left())
        return self._stream.readline(cap if limit < 0 else min(limit, cap))

    def tell(self) -> int:
        return self._stream.tell()


def walk_pickle(
    stream: _Stream | bytes, *, available: int | None = None, max_opcodes: int = MAX_OPCODES
) -> PickleWalk:
    """Walk one pickle from the current position of ``stream`` (a binary file, or bytes) to its ``STOP``.

    ``available`` bounds the bytes the walk may read (default: up to the end of the stream); the stream is
    left just after the last opcode read, so the next pickle of a multi-pickle file can be walked next.
    Nothing is executed or imported. Never raises on bad data: a malformed pickle is reported in
    :attr:`PickleWalk.error`, a walk cut short in :attr:`PickleWalk.too_large`.
    """
    if isinstance(stream, bytes | bytearray | memoryview):
        stream = io.BytesIO(stream)
    start = stream.tell()
    if available is None:
        available = _remaining(stream)
    machine = _Machine(_compat_pickle.NAME_MAPPING, _compat_pickle.IMPORT_MAPPING)
    bounded = _Bounded(stream, available)
    error = too_large = None
    try:
        machine.run(pickletools.genops(cast(IO[bytes], bounded)), max_opcodes)
    except _TooLarge as exc:
        too_large = str(exc)
    except (_Malformed, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError, EOFError) as exc:
        error = _reason(exc, machine.offset)
    except RecursionError:
        error = "nesting too deep to follow"
    except MemoryError:
        too_large = "more values than fit in memory"
    end = stream.tell()
    return PickleWalk(
        imports=tuple(machine.imports),
        unresolved=tuple(machine.unresolved),
        unsafe_calls=tuple(machine.unsafe_calls),
        persistent_ids=tuple(machine.persistent_ids),
        root=machine.result,
        start=start,
        end=end,
        protocol=machine.protocol,
        opcodes=machine.count,
        error=error,
        too_large=too_large,
    )


def _remaining(stream: _Stream) -> int:
    seek = getattr(stream, "seek", None)
    if seek is None:
        return MAX_VALUE_BYTES
    here = stream.tell()
    end = int(seek(0, io.SEEK_END))
    seek(here)
    return max(0, end - here)


def _reason(exc: BaseException, offset: int | None) -> str:
    where = f" at byte {offset}" if offset is not None else ""
    if isinstance(exc, IndexError):
        return f"the stack runs empty{where} (an opcode takes more values than were pushed)"
    if isinstance(exc, KeyError):
        return f"a memo entry is read before it is stored{where}"
    text = str(exc) or type(exc).__name__
    if "exhausted before seeing STOP" in text:
        return "the stream ends before STOP (truncated)"
    if "remain" in text or "not enough data" in text:
        return f"the stream ends inside a value{where} (truncated: {text})"
    return f"{text}{where}"


# --------------------------------------------------------------------------------------------------------
# The symbolic machine.

_MARK: Final = object()


class _Machine:
    """Replays opcodes on a stack of inert values; see the module docstring."""

    def __init__(self, name_mapping: dict[tuple[str, str], tuple[str, str]], import_mapping: dict[str, str]):
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.imports: list[Global] = []
        self.unresolved: list[tuple[int | None, str]] = []
        self.unsafe_calls: list[UnsafeCall] = []
        self.persistent_ids: list[PersistentRef] = []
        self.result: Any = None
        self.protocol: int | None = None
        self.count = 0
        self.offset: int | None = None
        self._kept = 0
        self._names = name_mapping
        self._modules = import_mapping
        self._handlers: dict[str, Callable[[Any, int | None], None]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }

    def run(self, ops: Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]], max_opcodes: int) -> None:
        handlers = self._handlers
        for opcode, arg, pos in ops:
            self.offset = pos
            self.count += 1
            if self.count > max_opcodes:
                raise _TooLarge(f"more than {max_opcodes:,} opcodes")
            handler = handlers.get(opcode.name)
            if handler is None:
                raise _Malformed(f"opcode {opcode.name} is not supported")
            handler(arg, pos)
            if opcode.name == "STOP":
                return
        raise _Malformed("the stream ends before STOP (truncated)")

    # Helpers.

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        value = self.stack.pop()
        if value is _MARK:
            raise _Malformed(f"a MARK is used as a value at byte {self.offset}")
        return value

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Malformed(f"no MARK to pop at byte {self.offset}")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> Any:
        return self.stack[-1]

    def keep(self, value: str | bytes) -> Any:
        if len(value) > _KEEP_CHARS or self._kept + len(value) > _KEEP_BUDGET:
            return Opaque("str" if isinstance(value, str) else "bytes", len(value))
        self._kept += len(value)
        return value

    def import_(self, module: str, name: str, pos: int | None) -> Global:
        written = f"{module}.{name}"
        if (module, name) in self._names:
            module, name = self._names[(module, name)]
        elif module in self._modules:
            module = self._modules[module]
        g = Global(module, name, written, pos)
        self.imports.append(g)
        return g

    def check_callable(self, func: Any, opcode: str, pos: int | None) -> None:
        if isinstance(func, Global) or (isinstance(func, Opaque) and func.kind == "global"):
            return  # an import: judged by the allowlist (or already reported as unresolved)
        self.unsafe_calls.append(UnsafeCall(opcode, pos, f"calls {_describe(func)}"))

    def check_target(self, target: Any, opcode: str, pos: int | None) -> None:
        if isinstance(target, Global):
            self.unsafe_calls.append(
                UnsafeCall(opcode, pos, f"modifies the imported class or function {target.full} itself")
            )

    # Opcodes: one method each (``op_<NAME>``).

    def op_PROTO(self, arg: Any, pos: int | None) -> None:
        self.protocol = int(arg)

    def op_FRAME(self, arg: Any, pos: int | None) -> None:
        pass

    def op_STOP(self, arg: Any, pos: int | None) -> None:
        self.result = self.pop()

    def op_MARK(self, arg: Any, pos: int | None) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self, arg: Any, pos: int | None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self, arg: Any, pos: int | None) -> None:
        self.pop_mark()

    def op_DUP(self, arg: Any, pos: int | None) -> None:
        self.push(self.top())

    def _push_arg(self, arg: Any, pos: int | None) -> None:
        self.push(arg)

    op_INT = op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = _push_arg
    op_FLOAT = op_BINFLOAT = _push_arg

    def _push_text(self, arg: Any, pos: int | None) -> None:
        self.push(self.keep(arg))

    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = _push_text
    op_UNICODE = op_SHORT_BINUNICODE = op_BINUNICODE = op_BINUNICODE8 = _push_text
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = op_BYTEARRAY8 = _push_text

    def op_NONE(self, arg: Any, pos: int | None) -> None:
        self.push(None)

    def op_NEWTRUE(self, arg: Any, pos: int | None) -> None:
        self.push(True)

    def op_NEWFALSE(self, arg: Any, pos: int | None) -> None:
        self.push(False)

    def op_NEXT_BUFFER(self, arg: Any, pos: int | None) -> None:
        self.push(Opaque("buffer"))

    def op_READONLY_BUFFER(self, arg: Any, pos: int | None) -> None:
        self.top()

    def op_EMPTY_LIST(self, arg: Any, pos: int | None) -> None:
        self.push([])

    def op_EMPTY_TUPLE(self, arg: Any, pos: int | None) -> None:
        self.push(())

    def op_EMPTY_DICT(self, arg: Any, pos: int | None) -> None:
        self.push(PickleDict())

    def op_EMPTY_SET(self, arg: Any, pos: int | None) -> None:
        self.push(PickleSet())

    def op_LIST(self, arg: Any, pos: int | None) -> None:
        self.push(self.pop_mark())

    def op_TUPLE(self, arg: Any, pos: int | None) -> None:
        self.push(tuple(self.pop_mark()))

    def op_TUPLE1(self, arg: Any, pos: int | None) -> None:
        self.push((self.pop(),))

    def op_TUPLE2(self, arg: Any, pos: int | None) -> None:
        b, a = self.pop(), self.pop()
        self.push((a, b))

    def op_TUPLE3(self, arg: Any, pos: int | None) -> None:
        c, b, a = self.pop(), self.pop(), self.pop()
        self.push((a, b, c))

    def op_DICT(self, arg: Any, pos: int | None) -> None:
        self.push(PickleDict(_pairs(self.pop_mark())))

    def op_FROZENSET(self, arg: Any, pos: int | None) -> None:
        self.push(PickleSet(self.pop_mark(), frozen=True))

    def _append(self, items: list[Any], opcode: str, pos: int | None) -> None:
        target = self.top()
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Call):
            target.appended.extend(items)
        elif isinstance(target, PickleSet) and opcode == "ADDITEMS":
            target.items.extend(items)
        else:
            self.check_target(target, opcode, pos)

    def op_APPEND(self, arg: Any, pos: int | None) -> None:
        self._append([self.pop()], "APPEND", pos)

    def op_APPENDS(self, arg: Any, pos: int | None) -> None:
        self._append(self.pop_mark(), "APPENDS", pos)

    def op_ADDITEMS(self, arg: Any, pos: int | None) -> None:
        self._append(self.pop_mark(), "ADDITEMS", pos)

    def _setitems(self, pairs: list[tuple[Any, Any]], opcode: str, pos: int | None) -> None:
        target = self.top()
        if isinstance(target, PickleDict | Call):
            target.items.extend(pairs)
        else:
            self.check_target(target, opcode, pos)

    def op_SETITEM(self, arg: Any, pos: int | None) -> None:
        value, key = self.pop(), self.pop()
        self._setitems([(key, value)], "SETITEM", pos)

    def op_SETITEMS(self, arg: Any, pos: int | None) -> None:
        self._setitems(_pairs(self.pop_mark()), "SETITEMS", pos)

    def op_GET(self, arg: Any, pos: int | None) -> None:
        self.push(self.memo[int(arg)])

    op_BINGET = op_LONG_BINGET = op_GET

    def op_PUT(self, arg: Any, pos: int | None) -> None:
        if int(arg) < 0:
            raise _Malformed(f"negative memo key at byte {pos}")
        self.memo[int(arg)] = self.top()

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_MEMOIZE(self, arg: Any, pos: int | None) -> None:
        self.memo[len(self.memo)] = self.top()

    def _extension(self, arg: Any, pos: int | None) -> None:
        self.unresolved.append(
            (pos, f"extension code {arg} (named by the loading process's copyreg registry, not by the file)")
        )
        self.push(Opaque("global"))

    op_EXT1 = op_EXT2 = op_EXT4 = _extension

    def op_GLOBAL(self, arg: Any, pos: int | None) -> None:
        module, _, name = str(arg).partition(" ")
        self.push(self.import_(module, name, pos))

    def op_STACK_GLOBAL(self, arg: Any, pos: int | None) -> None:
        name, module = self.pop(), self.pop()
        if isinstance(module, str) and isinstance(name, str):
            self.push(self.import_(module, name, pos))
            return
        self.unresolved.append(
            (pos, f"STACK_GLOBAL with module {_describe(module)} and name {_describe(name)}, not strings")
        )
        self.push(Opaque("global"))

    def op_INST(self, arg: Any, pos: int | None) -> None:
        module, _, name = str(arg).partition(" ")
        g = self.import_(module, name, pos)
        self.push(Call(g, tuple(self.pop_mark()), "INST", pos))

    def op_OBJ(self, arg: Any, pos: int | None) -> None:
        items = self.pop_mark()
        if not items:
            raise _Malformed(f"OBJ without a class at byte {pos}")
        self.check_callable(items[0], "OBJ", pos)
        self.push(Call(items[0], tuple(items[1:]), "OBJ", pos))

    def op_NEWOBJ(self, arg: Any, pos: int | None) -> None:
        args, cls = self.pop(), self.pop()
        self.check_callable(cls, "NEWOBJ", pos)
        self.push(Call(cls, args, "NEWOBJ", pos))

    def op_NEWOBJ_EX(self, arg: Any, pos: int | None) -> None:
        kwargs, args, cls = self.pop(), self.pop(), self.pop()
        self.check_callable(cls, "NEWOBJ_EX", pos)
        self.push(Call(cls, (args, kwargs), "NEWOBJ_EX", pos))

    def op_REDUCE(self, arg: Any, pos: int | None) -> None:
        args, func = self.pop(), self.pop()
        self.check_callable(func, "REDUCE", pos)
        self.push(Call(func, args, "REDUCE", pos))

    def op_BUILD(self, arg: Any, pos: int | None) -> None:
        state = self.pop()
        target = self.top()
        if isinstance(target, Call):
            target.state = state
        else:
            self.check_target(target, "BUILD", pos)

    def op_PERSID(self, arg: Any, pos: int | None) -> None:
        ref = PersistentRef(self.keep(str(arg)), pos)
        self.persistent_ids.append(ref)
        self.push(ref)

    def op_BINPERSID(self, arg: Any, pos: int | None) -> None:
        ref = PersistentRef(self.pop(), pos)
        self.persistent_ids.append(ref)
        self.push(ref)


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    if len(items) % 2:
        raise _Malformed("a dict is given an odd number of items")
    return list(zip(items[::2], items[1::2], strict=True))


def _describe(value: Any) -> str:
    """A short phrase for a symbolic value, for messages."""
    if isinstance(value, Global):
        return value.full
    if isinstance(value, Call):
        func = value.func.full if isinstance(value.func, Global) else "a computed value"
        return f"the result of {func}(...)"
    if isinstance(value, PersistentRef):
        return "a persistent object"
    if isinstance(value, Opaque):
        return f"an unreadable {value.kind}"
    if isinstance(value, str):
        return repr(value[:60])
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------------------
# Judging the imports.


def import_allowed(full_name: str, allow_imports: Collection[str] = ()) -> bool:
    """Whether ``torch.load(weights_only=True)`` (widened by ``allow_imports``, ``module.name`` entries)
    accepts the global ``full_name``; names in :data:`NEVER_ALLOWED_MODULES`/:data:`NEVER_ALLOWED_GLOBALS`
    are never accepted."""
    if _never_allowed(full_name):
        return False
    return full_name in WEIGHTS_ONLY_GLOBALS or full_name in allow_imports


def parse_allow_imports(entries: Iterable[str]) -> tuple[str, ...]:
    """Check and normalise user ``allow_imports`` entries (``--allow-import MODULE.NAME``): each must be a
    dotted Python name with a module and a name (``lightning.fabric.utilities.data.AttributeDict``).
    Returns them without duplicates, in order; raises ``ValueError`` naming the first bad entry. A name that
    can never be allowed (``os.system``) is accepted here and still refused by :func:`import_allowed`."""
    out: list[str] = []
    for raw in entries:
        entry = raw.strip() if isinstance(raw, str) else raw
        parts = entry.split(".") if isinstance(entry, str) else []
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise ValueError(
                f"allowed import {raw!r} is not of the form MODULE.NAME (a dotted Python name such as "
                "'collections.OrderedDict' or 'mypackage.config.TrainingConfig')"
            )
        out.append(entry)
    return tuple(dict.fromkeys(out))


def allowlist_agrees(findings: Iterable[Finding], allow_imports: Collection[str]) -> bool:
    """Whether the import findings of an earlier check (a remembered verdict) are what a check allowing
    ``allow_imports`` would give: every global it passed only because it was allowed then
    (``pickle.allowed_import``) is allowed now, and no global it refused (``pickle.unsafe_import``) is."""
    for f in findings:
        names = f.detail.get("imports") if f.detail else None
        if not isinstance(names, list):
            continue
        if f.code == "pickle.allowed_import" and not all(
            import_allowed(str(n), allow_imports) for n in names
        ):
            return False
        if f.code == "pickle.unsafe_import" and any(import_allowed(str(n), allow_imports) for n in names):
            return False
    return True


def _never_allowed(full_name: str) -> bool:
    if full_name in NEVER_ALLOWED_GLOBALS:
        return True
    return any(full_name.startswith(m + ".") for m in NEVER_ALLOWED_MODULES)


def _shown(g: Global) -> str:
    """``posix.system (os.system)``: the name as imported, and the one people know it by."""
    text = g.full
    alias = _OS_ALIASES.get(g.module)
    if alias:
        text += f" ({alias}.{g.name})"
    if g.written != g.full:
        text += f" (written as {g.written})"
    return text


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def import_findings(
    walks: Sequence[tuple[str, PickleWalk]], *, allow_imports: Collection[str] = (), label: str = ""
) -> list[Finding]:
    """The findings on the imports and calls of the pickles of one file: ``walks`` pairs each pickle's name
    (``data.pkl``, ``the main pickle``...) with its walk. One finding per code, naming every offender of
    every pickle; ``label`` (the file name) prefixes messages. An empty list means every import is one
    ``torch.load(weights_only=True)`` accepts (or ``allow_imports`` allows)."""
    where = f"{label}: " if label else ""
    out: list[Finding] = []
    bad: list[Global] = []
    bad_pickles: list[str] = []
    widened: list[str] = []
    for name, walk in walks:
        found = [g for g in walk.imports if not import_allowed(g.full, allow_imports)]
        bad.extend(found)
        if found:
            bad_pickles.append(name)
        widened.extend(
            g.full
            for g in walk.imports
            if allow_imports and g.full not in WEIGHTS_ONLY_GLOBALS and import_allowed(g.full, allow_imports)
        )
    if bad:
        names = _unique(_shown(g) for g in bad)
        fulls = _unique(g.full for g in bad)
        never = [n for n in fulls if _never_allowed(n)]
        listed = ", ".join(names[:_LIST_LIMIT])
        if len(names) > _LIST_LIMIT:
            listed += f" and {len(names) - _LIST_LIMIT} more"
        advice = (
            "Never load this file with pickle or torch.load(weights_only=False): unpickling would import and "
            "call these. "
        )
        widen = [n for n in fulls if n not in never]
        if widen:
            advice += (
                "If you trust this repository and these names, allow them explicitly (--allow-import "
                f"{widen[0]}, or allow_imports=[...])"
                + (f"; {', '.join(never)} can never be allowed." if never else ".")
            )
        else:
            advice += "These run commands or code and can never be allowed."
        out.append(
            fail(
                "pickle.unsafe_import",
                f"{where}the pickle imports {len(fulls)} global(s) that torch.load(weights_only=True) refuses: "
                f"{listed}. {advice}",
                imports=fulls,
                never_allowed=never,
                pickles=bad_pickles,
                offsets=[g.offset for g in bad[:_LIST_LIMIT]],
            )
        )
    if widened:
        allowed = _unique(widened)
        out.append(
            info(
                "pickle.allowed_import",
                f"{where}the pickle imports {len(allowed)} global(s) outside torch.load(weights_only=True)'s "
                f"allowlist, accepted only because they were allowed explicitly: {', '.join(allowed[:_LIST_LIMIT])}"
                + (f" and {len(allowed) - _LIST_LIMIT} more" if len(allowed) > _LIST_LIMIT else "")
                + ". Load it with torch.load(weights_only=True) after torch.serialization.add_safe_globals "
                "for these, never with weights_only=False.",
                imports=allowed,
            )
        )
    unresolved = [(name, pos, why) for name, w in walks for pos, why in w.unresolved]
    if unresolved:
        first = unresolved[0]
        out.append(
            fail(
                "pickle.unresolved_import",
                f"{where}{first[0]} makes {len(unresolved)} import(s) whose target is only known by running "
                f"it: {first[2]} at byte {first[1]}. Nothing can vouch for what it would import; do not "
                "unpickle this file.",
                count=len(unresolved),
                reasons=[why for _, _, why in unresolved[:_LIST_LIMIT]],
            )
        )
    calls = [(name, c) for name, w in walks for c in w.unsafe_calls]
    if calls:
        name, c = calls[0]
        out.append(
            fail(
                "pickle.unsafe_call",
                f"{where}{name} {c.what} ({c.opcode} at byte {c.offset})"
                + (f", and {len(calls) - 1} more such operation(s)" if len(calls) > 1 else "")
                + ". torch.load(weights_only=True) refuses this, and a full unpickler would run it: do not "
                "unpickle this file.",
                count=len(calls),
                operations=[f"{c.opcode} at byte {c.offset}: {c.what}" for _, c in calls[:_LIST_LIMIT]],
            )
        )
    for name, walk in walks:
        if walk.error is not None:
            out.append(
                fail(
                    "pickle.invalid",
                    f"{where}{name} is not a well-formed pickle: {walk.error}. Every loader refuses it; the "
                    "file is damaged or truncated, re-download it.",
                    pickle=name,
                    error=walk.error,
                    offset=walk.end,
                )
            )
        elif walk.too_large is not None:
            out.append(
                fail(
                    "pickle.too_large",
                    f"{where}{name} holds {walk.too_large}, more than vcache walks: the check stopped at byte "
                    f"{walk.end}, so the imports after that point were not checked. Treat the file as "
                    "unverified and do not unpickle it unless you trust its publisher.",
                    pickle=name,
                    reason=walk.too_large,
                    offset=walk.end,
                )
            )
    return out
