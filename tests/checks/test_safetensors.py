"""Tests for vcache.checks.safetensors: the strict header and layout parser.

The corpus below has one byte-exact file per malformed case of ``docs/safetensors.md`` §1.2-§1.11 and
per real-world signature of §2, each with the exact set of failing codes expected. Every case is also opened
with the official reader (``safetensors.safe_open(..., framework="np")``): the verdicts must agree, except for
the strict extras, where the official reader accepts and this module fails. Files written by the safetensors
library itself (numpy and torch front ends, every dtype they write, zero-size tensors and scalars) must pass.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from vcache.checks.safetensors import (
    DTYPE_BITS,
    MAX_HEADER_SIZE,
    SafetensorsHeader,
    TensorEntry,
    parse_header_bytes,
    read_header,
)
from vcache.report import Finding, Severity

from .corpus import (
    HTML_PAGE,
    LFS_POINTER,
    PICKLE_ZIP,
    U64_MAX,
    blob,
    entry,
    header,
    layout,
    write,
)

STRICT_EXTRAS = {"safetensors.duplicate_key", "safetensors.absurd_dimension", "safetensors.nonstandard_entry"}
E = '"dtype":"F32","shape":[1],"data_offsets":[0,4]'  # a valid entry body, 4 bytes of data
F4 = bytes(4)


@dataclass(frozen=True)
class Case:
    """One corpus file: its bytes, the exact failing codes expected, and warning codes that must appear."""

    id: str
    data: bytes
    fails: frozenset[str] = frozenset()
    warns: frozenset[str] = field(default=frozenset())


def case(id: str, data: bytes, *fails: str, warns: Sequence[str] = ()) -> Case:
    return Case(
        id,
        data,
        frozenset(f"safetensors.{c}" for c in fails),
        frozenset(f"safetensors.{c}" for c in warns),
    )


def t(name: str, dtype: str, shape: Sequence[int], begin: int, end: int) -> tuple[str, str]:
    return name, entry(dtype, shape, begin, end)


def with_entry(extra: str) -> str:
    """A one-tensor header whose entry carries ``extra`` after the standard fields."""
    return '{"a":{' + E + "," + extra + "}}"


# ---------------------------------------------------------------------------------------------------------
# The corpus. Each group follows the reference's order; ids are "section/what".

CORPUS: list[Case] = [
    # §1.2 step 1: shorter than the length prefix
    case("step1/empty_file", b"", "header_too_small"),
    case("step1/seven_bytes", b"\x10\x00\x00\x00\x00\x00\x00", "header_too_small"),
    # steps 2-3: declared length over the cap
    case("step3/n_100000001", blob("{}", length=MAX_HEADER_SIZE + 1), "header_too_large"),
    case("step3/n_u64_max", blob("{}", length=U64_MAX), "header_too_large"),
    case("sec2/lfs_pointer", LFS_POINTER, "header_too_large"),
    case("sec2/html_page", HTML_PAGE, "header_too_large"),
    case("sec5/pickle_zip", PICKLE_ZIP, "header_too_large"),
    # steps 4-5: the header runs past the end of the file
    case("step5/cut_inside_header", blob('{"a":{' + E + "}}")[:30], "invalid_header_length"),
    case("step5/n_one_past_end", blob("{}", length=3), "invalid_header_length"),
    case("step5/length_only", blob(b"", length=1000), "invalid_header_length"),
    # step 6: UTF-8
    case("step6/invalid_byte", blob(b'{"\xff":{' + E.encode() + b"}}", F4), "invalid_utf8"),
    case("step6/overlong", blob(b'{"\xc0\xaf":{' + E.encode() + b"}}", F4), "invalid_utf8"),
    case("step6/encoded_surrogate", blob(b'{"\xed\xa0\x80":{' + E.encode() + b"}}", F4), "invalid_utf8"),
    case("step6/cut_multibyte", blob(b'{"a":{' + E.encode() + b"}}    \xe2\x82", F4), "invalid_utf8"),
    # step 7: syntax (serde's InvalidHeaderDeserialization)
    case("sec2/zero_filled_prefix", bytes(8) + bytes(64), "invalid_json"),
    case("step7/zero_filled_header", blob(bytes(16), F4), "invalid_json"),
    case("sec2/nul_padded_header", blob('{"a":{' + E + "}}\0\0\0\0\0\0", F4), "invalid_json"),
    case("step7/missing_value", blob('{"a":}'), "invalid_json"),
    case("step7/trailing_comma", blob('{"a":{' + E + "},}", F4), "invalid_json"),
    case("step7/comment", blob('{/* c */"a":{' + E + "}}", F4), "invalid_json"),
    case("step7/single_quotes", blob("{'a':{" + E + "}}", F4), "invalid_json"),
    case("step7/unquoted_key", blob("{a:{" + E + "}}", F4), "invalid_json"),
    case("step7/key_not_string", blob("{1:2}"), "invalid_json"),
    case("step7/trailing_text", blob('{"a":{' + E + "}} x", F4), "invalid_json"),
    case("step7/second_object", blob('{"a":{' + E + "}}{}", F4), "invalid_json"),
    case("step7/form_feed_before", blob('\x0c{"a":{' + E + "}}", F4), "invalid_json"),
    case("step7/form_feed_after", blob('{"a":{' + E + "}}\x0c", F4), "invalid_json"),
    case("step7/bom", blob('\ufeff{"a":{' + E + "}}", F4), "invalid_json"),
    case("step7/nbsp_padding", blob('{"a":{' + E + "}}\u00a0", F4), "invalid_json"),
    case("step7/top_array", blob("[]"), "invalid_json"),
    case("step7/top_null", blob("null"), "invalid_json"),
    case("step7/top_string", blob('"x"'), "invalid_json"),
    case("step7/top_number", blob("0"), "invalid_json"),
    case("step7/top_deep_array", blob("[" * 10_000 + "]" * 10_000), "invalid_json"),
    case("step7/unclosed_deep", blob("[" * 1_000_000), "invalid_json"),
    case("step7/deep_unknown_126", blob(with_entry('"x":' + "[" * 126 + "]" * 126), F4), "invalid_json"),
    case(
        "step7/deep_unknown_obj_126",
        blob(with_entry('"x":' + '{"k":' * 126 + "1" + "}" * 126), F4),
        "invalid_json",
    ),
    case(
        "step7/deep_unknown_10000", blob(with_entry('"x":' + "[" * 10_000 + "]" * 10_000), F4), "invalid_json"
    ),
    case("step7/nan_literal", blob(with_entry('"x":NaN'), F4), "invalid_json"),
    case("step7/infinity_literal", blob(with_entry('"x":Infinity'), F4), "invalid_json"),
    case("step7/minus_infinity_literal", blob(with_entry('"x":-Infinity'), F4), "invalid_json"),
    case("step7/float_out_of_range", blob(with_entry('"x":1e400'), F4), "invalid_json"),
    case("step7/int_out_of_range_309", blob(with_entry('"x":' + "9" * 309), F4), "invalid_json"),
    case("step7/int_out_of_range_310", blob(with_entry('"x":' + "9" * 310), F4), "invalid_json"),
    case("step7/int_out_of_range_5000", blob(with_entry('"x":' + "9" * 5000), F4), "invalid_json"),
    case(
        "step7/leading_zero",
        blob('{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', F4),
        "invalid_json",
    ),
    case("step7/lone_surrogate_name", blob('{"\\ud800":{' + E + "}}", F4), "invalid_json"),
    case("step7/lone_low_surrogate_name", blob('{"x\\udc00":{' + E + "}}", F4), "invalid_json"),
    case("step7/lone_surrogate_unknown", blob(with_entry('"x":"\\ud83d"'), F4), "invalid_json"),
    case(
        "step7/lone_surrogate_metadata",
        blob('{"__metadata__":{"k":"\\udfff"},"a":{' + E + "}}", F4),
        "invalid_json",
    ),
    case("step7/control_char_in_name", blob('{"a\x01":{' + E + "}}", F4), "invalid_json"),
    case("step7/bad_escape", blob('{"a\\x":{' + E + "}}", F4), "invalid_json"),
    # step 7: schema
    case("step7/duplicate_dtype", blob(with_entry('"dtype":"F32"'), F4), "duplicate_field"),
    case("step7/duplicate_shape_escaped", blob(with_entry('"\\u0073hape":[1]'), F4), "duplicate_field"),
    case(
        "step7/duplicate_metadata",
        blob('{"__metadata__":{},"__metadata__":{},"a":{' + E + "}}", F4),
        "duplicate_field",
    ),
    case(
        "step7/duplicate_metadata_null", blob('{"__metadata__":null,"__metadata__":null}'), "duplicate_field"
    ),
    case(
        "step7/duplicate_metadata_escaped",
        blob('{"\\u005f_metadata__":{},"__metadata__":{}}'),
        "duplicate_field",
    ),
    case(
        "sec1.5/metadata_int_value", blob('{"__metadata__":{"k":1},"a":{' + E + "}}", F4), "invalid_metadata"
    ),
    case("sec1.5/metadata_null_value", blob('{"__metadata__":{"k":null}}'), "invalid_metadata"),
    case("sec1.5/metadata_list_value", blob('{"__metadata__":{"k":["v"]}}'), "invalid_metadata"),
    case("sec1.5/metadata_object_value", blob('{"__metadata__":{"k":{}}}'), "invalid_metadata"),
    case("sec1.5/metadata_string", blob('{"__metadata__":"pt"}'), "invalid_metadata"),
    case("sec1.5/metadata_list", blob('{"__metadata__":[]}'), "invalid_metadata"),
    case("sec1.5/metadata_bool", blob('{"__metadata__":true}'), "invalid_metadata"),
    case("step7/entry_null", blob('{"a":null}'), "invalid_entry"),
    case("step7/entry_string", blob('{"a":"F32"}'), "invalid_entry"),
    case("step7/entry_number", blob('{"a":4}'), "invalid_entry"),
    case("step7/entry_empty_object", blob('{"a":{}}'), "invalid_entry"),
    case("step7/entry_no_dtype", blob('{"a":{"shape":[1],"data_offsets":[0,4]}}', F4), "invalid_entry"),
    case("step7/entry_no_shape", blob('{"a":{"dtype":"F32","data_offsets":[0,4]}}', F4), "invalid_entry"),
    case("step7/entry_no_offsets", blob('{"a":{"dtype":"F32","shape":[1]}}', F4), "invalid_entry"),
    case("step7/entry_array_2", blob('{"a":["F32",[1]]}', F4), "invalid_entry"),
    case("step7/entry_array_4", blob('{"a":["F32",[1],[0,4],1]}', F4), "invalid_entry"),
    case(
        "sec1.6/dtype_lowercase",
        blob('{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_float32",
        blob('{"a":{"dtype":"float32","shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_F8_E4M3FN",
        blob('{"a":{"dtype":"F8_E4M3FN","shape":[1],"data_offsets":[0,1]}}', b"\0"),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_F128",
        blob('{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}', bytes(16)),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_C128",
        blob('{"a":{"dtype":"C128","shape":[1],"data_offsets":[0,16]}}', bytes(16)),
        "unknown_dtype",
    ),
    case("sec1.6/dtype_empty", blob('{"a":{"dtype":"","shape":[0],"data_offsets":[0,0]}}'), "unknown_dtype"),
    case("sec1.6/dtype_number", blob('{"a":{"dtype":32,"shape":[0],"data_offsets":[0,0]}}'), "unknown_dtype"),
    case("sec1.6/dtype_null", blob('{"a":{"dtype":null,"shape":[0],"data_offsets":[0,0]}}'), "unknown_dtype"),
    case(
        "sec1.6/dtype_array",
        blob('{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_map_two_keys",
        blob('{"a":{"dtype":{"F32":null,"F16":null},"shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_map_value",
        blob('{"a":{"dtype":{"F32":1},"shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.6/dtype_map_unknown",
        blob('{"a":{"dtype":{"F128":null},"shape":[1],"data_offsets":[0,4]}}', F4),
        "unknown_dtype",
    ),
    case(
        "sec1.4/shape_string",
        blob('{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_object",
        blob('{"a":{"dtype":"F32","shape":{"0":1},"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_null",
        blob('{"a":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_float",
        blob('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_exponent",
        blob('{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_minus_zero",
        blob('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_negative",
        blob('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_bool",
        blob('{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_2_64",
        blob('{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}}'),
        "invalid_shape",
    ),
    case(
        "sec1.4/shape_nested",
        blob('{"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}}', F4),
        "invalid_shape",
    ),
    case(
        "sec1.4/offsets_one",
        blob('{"a":{"dtype":"F32","shape":[0],"data_offsets":[0]}}'),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_three",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_float",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4]}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_minus_zero",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_negative",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_2_64",
        blob('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}'),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_object",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":{"0":0,"1":4}}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_bool",
        blob('{"a":{"dtype":"U8","shape":[1],"data_offsets":[false,true]}}', b"\0"),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/offsets_string",
        blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":"0,4"}}', F4),
        "invalid_data_offsets",
    ),
    case(
        "sec1.4/long_shape_bool",
        blob(header(("a", '{"dtype":"U8","shape":[' + "1," * 10 + 'true],"data_offsets":[0,1]}')), b"\0"),
        "invalid_shape",
    ),
    case(
        "sec1.4/long_shape_negative",
        blob(header(("a", '{"dtype":"U8","shape":[' + "1," * 10 + '-1],"data_offsets":[0,1]}')), b"\0"),
        "invalid_shape",
    ),
    case(
        "sec1.4/long_shape_float",
        blob(header(("a", '{"dtype":"U8","shape":[' + "1," * 10 + '1.0],"data_offsets":[0,1]}')), b"\0"),
        "invalid_shape",
    ),
    case(
        "sec1.4/long_shape_string",
        blob(header(("a", '{"dtype":"U8","shape":[' + "1," * 10 + '"1"],"data_offsets":[0,1]}')), b"\0"),
        "invalid_shape",
    ),
    case(
        "sec1.4/long_shape_2_64",
        blob(
            header(
                ("a", '{"dtype":"U8","shape":[' + "1," * 10 + '18446744073709551616],"data_offsets":[0,1]}')
            ),
            b"\0",
        ),
        "invalid_shape",
    ),
    # step 9: layout (sorted by (begin, end), contiguous from 0)
    case("step9/first_not_zero", blob(header(t("a", "F32", [1], 4, 8)), bytes(8)), "invalid_offset"),
    case(
        "step9/hole",
        blob(header(t("a", "F32", [1], 0, 4), t("b", "F32", [1], 8, 12)), bytes(12)),
        "invalid_offset",
    ),
    case(
        "step9/overlap",
        blob(header(t("a", "F32", [2], 0, 8), t("b", "F32", [2], 4, 12)), bytes(12)),
        "invalid_offset",
    ),
    case(
        "step9/containment",
        blob(header(t("a", "F32", [4], 0, 16), t("b", "F32", [1], 4, 8)), bytes(16)),
        "invalid_offset",
    ),
    case(
        "step9/reversed",
        blob(header(t("a", "F32", [1], 0, 4), t("b", "U8", [0], 4, 0)), F4),
        "invalid_offset",
    ),
    case(
        "step9/same_range_twice",
        blob(header(t("a", "F32", [1], 0, 4), t("b", "F32", [1], 0, 4)), F4),
        "invalid_offset",
    ),
    case(
        "step9/zero_size_past_end",
        blob(header(t("a", "F32", [1], 0, 4), t("z", "F32", [0], 40, 40)), F4),
        "invalid_offset",
    ),
    case(
        "step9/zero_size_inside",
        blob(header(t("a", "F32", [4], 0, 16), t("z", "F32", [0], 8, 8)), bytes(16)),
        "invalid_offset",
    ),
    case("step9/overflow_elements", blob(header(t("a", "F32", [2**40, 2**40], 0, 0))), "overflow"),
    case("step9/overflow_bits", blob(header(t("a", "U8", [2**47, 2**14], 0, 0))), "overflow"),
    case("step9/overflow_u8_2_61", blob(header(t("a", "U8", [2**61], 0, 0))), "overflow", "absurd_dimension"),
    case(
        "step9/overflow_before_zero",
        blob(header(t("a", "F32", [2**63, 2**63, 0], 0, 0))),
        "overflow",
        "absurd_dimension",
    ),
    case("step9/misaligned_slice_f4", blob(header(t("a", "F4", [3], 0, 1)), b"\0"), "misaligned_slice"),
    case("step9/misaligned_slice_f6", blob(header(t("a", "F6_E2M3", [1], 0, 1)), b"\0"), "misaligned_slice"),
    case(
        "step9/misaligned_slice_f6_e3m2",
        blob(header(t("a", "F6_E3M2", [2], 0, 2)), b"\0\0"),
        "misaligned_slice",
    ),
    case("step9/scalar_without_bytes", blob(header(t("a", "F32", [], 0, 0))), "tensor_size_mismatch"),
    case("step9/zero_shape_with_bytes", blob(header(t("a", "F32", [0], 0, 4)), F4), "tensor_size_mismatch"),
    case("step9/short_range", blob(header(t("a", "F32", [2], 0, 4)), F4), "tensor_size_mismatch"),
    case(
        "step9/rust_test_invalid_info",
        blob('{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}}'),
        "tensor_size_mismatch",
    ),
    case(
        "step9/offset_check_before_size", blob(header(t("a", "F32", [3], 4, 8)), bytes(8)), "invalid_offset"
    ),
    case(
        "step9/first_in_offset_order_decides",
        blob(header(t("b", "F32", [1], 9, 13), t("a", "F32", [3], 0, 8)), bytes(13)),
        "tensor_size_mismatch",
    ),
    case("step9/long_shape_overflow", blob(header(t("a", "F32", [2] * 70, 0, 0))), "overflow"),
    case(
        "step9/long_shape_overflow_before_zero",
        blob(header(t("a", "F32", [1] * 9 + [2**40, 2**40, 0], 0, 0))),
        "overflow",
    ),
    case(
        "step9/long_shape_size_mismatch",
        blob(header(t("a", "F32", [1] * 20 + [2], 0, 4)), F4),
        "tensor_size_mismatch",
    ),
    # step 10: the data section against the file size
    case(
        "sec2/truncated_download",
        layout([("a", "F32", [64]), ("b", "F32", [64])])[:-100],
        "incomplete_buffer",
    ),
    case("sec2/trailing_bytes", layout([("a", "F32", [4])]) + b"\0", "incomplete_buffer"),
    case("sec2/trailing_kilobyte", layout([("a", "F32", [4])]) + bytes(1024), "incomplete_buffer"),
    case("step10/empty_header_with_data", blob("{}      ", F4), "incomplete_buffer"),
    case("step10/no_data_at_all", blob(header(t("a", "F32", [4], 0, 16))), "incomplete_buffer"),
    # strict extras: the official reader accepts these
    case(
        "sec1.11/same_name_same_offsets",
        blob(header(t("w", "F32", [4], 0, 16), t("w", "F32", [4], 0, 16)), bytes(16)),
        "duplicate_key",
    ),
    case(
        "sec1.11/escaped_duplicate_name", blob('{"a":{' + E + '},"\\u0061":{' + E + "}}", F4), "duplicate_key"
    ),
    case(
        "sec1.11/type_smuggle",
        blob(header(t("w", "F32", [4], 0, 16), t("w", "I32", [4], 0, 16)), bytes(16)),
        "duplicate_key",
    ),
    case(
        "sec1.11/duplicate_leaves_hole",
        blob(header(t("w", "F32", [4], 0, 16), t("w", "I32", [4], 16, 32)), bytes(32)),
        "duplicate_key",
        "invalid_offset",
    ),
    case(
        "sec1.11/metadata_duplicate_key",
        blob('{"__metadata__":{"format":"pt","format":"np"}}'),
        "duplicate_key",
    ),
    case(
        "sec1.11/metadata_escaped_duplicate",
        blob('{"__metadata__":{"format":"pt","\\u0066ormat":"pt"}}'),
        "duplicate_key",
    ),
    case(
        "sec1.11/unknown_field_twice",
        blob(with_entry('"x":1,"x":2'), F4),
        "duplicate_key",
        warns=["unknown_field"],
    ),
    case(
        "sec1.11/nested_duplicate_in_unknown",
        blob(with_entry('"x":{"k":1,"k":2}'), F4),
        "duplicate_key",
        warns=["unknown_field"],
    ),
    case("sec1.12/absurd_zero_then_2_63", blob(header(t("a", "F32", [0, 2**63], 0, 0))), "absurd_dimension"),
    case("sec1.12/absurd_2_48", blob(header(t("a", "U8", [2**48, 0], 0, 0))), "absurd_dimension"),
    case(
        "sec1.12/absurd_product_hidden_by_zero",
        blob(header(t("a", "U8", [0, 2**40, 2**40], 0, 0))),
        "absurd_dimension",
    ),
    case(
        "sec1.12/absurd_long_shape",
        blob(header(t("a", "U8", [1] * 9 + [2**48, 0], 0, 0))),
        "absurd_dimension",
    ),
    case(
        "sec1.12/absurd_long_shape_hidden_product",
        blob(header(t("a", "U8", [1] * 9 + [0, 2**40, 2**40], 0, 0))),
        "absurd_dimension",
    ),
    case("serde/entry_as_array", blob('{"a":["F32",[1],[0,4]]}', F4), "nonstandard_entry"),
    case(
        "serde/dtype_as_map",
        blob('{"a":{"dtype":{"F32":null},"shape":[1],"data_offsets":[0,4]}}', F4),
        "nonstandard_entry",
    ),
    case("serde/array_with_dtype_map", blob('{"a":[{"F32":null},[1],[0,4]]}', F4), "nonstandard_entry"),
    # accepted files, some with warnings
    case("ok/empty_header", blob("{}      ")),
    case("ok/metadata_only", blob(header(metadata={"format": "pt"}))),
    case("ok/metadata_null", blob('{"__metadata__":null,"a":{' + E + "}}  ", F4)),
    case(
        "ok/zero_size_tensors_share_offset",
        blob(header(t("a", "F32", [2, 0], 0, 0), t("b", "F32", [2, 0], 0, 0))),
    ),
    case(
        "ok/zero_size_between",
        blob(
            header(t("a", "F32", [1], 0, 4), t("z", "I64", [0, 3], 4, 4), t("b", "F32", [1], 4, 8)), bytes(8)
        ),
    ),
    case("ok/long_shape", blob(header(t("a", "F32", [1] * 20 + [2], 0, 8)), bytes(8))),
    case("ok/long_zero_shape", blob(header(t("a", "F32", [0] * 20, 0, 0)))),
    case("ok/scalar", blob(header(t("s", "F64", [], 0, 8)), bytes(8))),
    case(
        "ok/json_order_differs_from_offsets",
        blob(header(t("b", "F32", [1], 4, 8), t("a", "F32", [1], 0, 4)), bytes(8)),
    ),
    case("ok/empty_name", blob(header(t("", "F32", [1], 0, 4)), F4)),
    case("ok/name_like_metadata", blob(header(t("__metadata__x", "F32", [1], 0, 4)), F4)),
    case("ok/escaped_field_names", blob('{"a":{"\\u0064type":"F32","shape":[1],"data_offsets":[0,4]}}', F4)),
    case("ok/escaped_metadata_key", blob('{"\\u005f_metadata__":{"format":"pt"}}  ')),
    case("ok/surrogate_pair_name", blob('{"\\ud83d\\ude00":{' + E + "}}", F4)),
    case("ok/del_in_name", blob('{"a\x7f":{' + E + "}}", F4)),
    case("ok/unicode_name", blob(header(t("模型.权重", "F32", [1], 0, 4)), F4)),
    case(
        "ok/all_dtypes_subbyte",
        blob(
            header(
                t("f4", "F4", [2, 4], 0, 4), t("e2m3", "F6_E2M3", [4], 4, 7), t("e3m2", "F6_E3M2", [8], 7, 13)
            ),
            bytes(13),
        ),
    ),
    case(
        "ok/f8_variants",
        blob(
            header(
                *(
                    t(d, d, [2], 2 * i, 2 * i + 2)
                    for i, d in enumerate(["F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"])
                )
            ),
            bytes(10),
        ),
    ),
    case("ok/c64", blob(header(t("c", "C64", [2], 0, 16)), bytes(16))),
    case("sec1.12/bool_byte_2", blob(header(t("m", "BOOL", [2], 0, 2)), b"\x01\x02")),
    case("sec1.12/f4_odd_last_dim", blob(header(t("q", "F4", [2, 3], 0, 3)), bytes(3))),
    case("sec1.12/nan_values", blob(header(t("n", "F32", [1], 0, 4)), b"\x00\x00\xc0\x7f")),
    case("sec1.4/unknown_field", blob(with_entry('"foo":1'), F4), warns=["unknown_field"]),
    case("sec1.4/unknown_field_minus_zero", blob(with_entry('"x":-0'), F4), warns=["unknown_field"]),
    case("sec1.4/unknown_field_float", blob(with_entry('"x":1.5e300'), F4), warns=["unknown_field"]),
    case("sec1.4/unknown_field_big_int", blob(with_entry('"x":' + "9" * 308), F4), warns=["unknown_field"]),
    case(
        "sec1.4/unknown_field_negative_big", blob(with_entry('"x":-' + "9" * 30), F4), warns=["unknown_field"]
    ),
    case(
        "sec1.4/unknown_field_deep_125",
        blob(with_entry('"x":' + "[" * 125 + "]" * 125), F4),
        warns=["unknown_field"],
    ),
    case(
        "sec1.4/unknown_field_flat_list",
        blob(with_entry('"x":[' + ",".join(["0", "1.5", '"s"', "null"] * 50) + "]"), F4),
        warns=["unknown_field"],
    ),
    case(
        "sec1.8/rust_test_n60",
        blob('{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}', bytes(16)),
        warns=["misaligned"],
    ),
    case(
        "sec1.8/unaligned_f32_after_u8",
        blob(header(t("a", "U8", [1], 0, 1), t("b", "F32", [1], 1, 5)), bytes(5)),
        warns=["misaligned"],
    ),
    case("sec1.9/leading_whitespace", blob(' \t\n\r{"a":{' + E + "}}", F4), warns=["leading_whitespace"]),
    case("sec1.9/newline_padding", blob('{"a":{' + E + "}}\n", F4), warns=["noncanonical_padding"]),
    case(
        "sec1.9/long_space_padding", blob('{"a":{' + E + "}}" + " " * 12, F4), warns=["noncanonical_padding"]
    ),
    case("sec3.4/metadata_format_np", blob(header(metadata={"format": "np"})), warns=["metadata_format"]),
    case("sec3.4/metadata_empty", blob(header(metadata={})), warns=["metadata_format"]),
    case("sec3.4/metadata_no_format", blob(header(metadata={"foo": "bar"})), warns=["metadata_format"]),
]


def _codes(findings: Sequence[Finding], severity: Severity) -> set[str]:
    return {f.code for f in findings if f.severity is severity}


def _library_accepts(path: Path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="np"):
            return True
    except Exception:  # the official reader's verdict, whatever it raises
        return False


def test_corpus_ids_are_unique() -> None:
    ids = [c.id for c in CORPUS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("c", CORPUS, ids=[c.id for c in CORPUS])
def test_corpus(c: Case, tmp_path: Path) -> None:
    path = write(tmp_path, "model.safetensors", c.data)
    hdr, findings = read_header(path)

    assert _codes(findings, Severity.FAIL) == c.fails, [f.message for f in findings]
    assert c.warns <= _codes(findings, Severity.WARN)
    assert (hdr is None) == bool(c.fails)
    for f in findings:
        assert f.message.startswith("model.safetensors: ")

    # The official reader agrees, except on the strict extras, which it accepts.
    expected_library_verdict = not (c.fails - STRICT_EXTRAS)
    assert _library_accepts(path) is expected_library_verdict


def test_every_step_and_extra_has_a_case() -> None:
    covered = set().union(*(c.fails for c in CORPUS)) | set().union(*(c.warns for c in CORPUS))
    expected = {
        f"safetensors.{c}"
        for c in [
            "header_too_small",
            "header_too_large",
            "invalid_header_length",
            "invalid_utf8",
            "invalid_json",
            "duplicate_field",
            "invalid_metadata",
            "invalid_entry",
            "unknown_dtype",
            "invalid_shape",
            "invalid_data_offsets",
            "invalid_offset",
            "overflow",
            "misaligned_slice",
            "tensor_size_mismatch",
            "incomplete_buffer",
            "duplicate_key",
            "absurd_dimension",
            "nonstandard_entry",
            "misaligned",
            "leading_whitespace",
            "noncanonical_padding",
            "unknown_field",
            "metadata_format",
        ]
    }
    assert expected <= covered


# ---------------------------------------------------------------------------------------------------------
# What the header holds when the file is valid.


def test_valid_header_contents() -> None:
    data = layout(
        [("z.weight", "F32", [2, 3]), ("a.bias", "BF16", [3]), ("s", "I64", [])],
        metadata={"format": "pt"},
        data_order=[2, 0, 1],
    )
    hdr, findings = parse_header_bytes(data, len(data))
    assert findings == []
    assert isinstance(hdr, SafetensorsHeader)
    assert hdr.metadata == {"format": "pt"}
    assert hdr.file_size == len(data)
    assert hdr.data_start == 8 + hdr.header_len
    assert hdr.data_size == 8 + 24 + 6
    assert [t.name for t in hdr.tensors] == ["s", "z.weight", "a.bias"]  # data-offset order
    assert hdr.tensors[0] == TensorEntry("s", "I64", (), 0, 8)
    z = hdr.by_name["z.weight"]
    assert (z.dtype, z.shape, z.begin, z.end, z.nbytes, z.numel, z.bits) == ("F32", (2, 3), 8, 32, 24, 6, 32)


def test_dtype_bits_covers_the_reference() -> None:
    assert dict(DTYPE_BITS) == {
        "BOOL": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E8M0": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }


# ---------------------------------------------------------------------------------------------------------
# Messages and details that tell a person what to do.


def test_lfs_pointer_message_names_the_likely_cause(tmp_path: Path) -> None:
    _, findings = read_header(write(tmp_path, "model-00001-of-00002.safetensors", LFS_POINTER))
    (f,) = findings
    assert "git-LFS pointer or an HTML error page" in f.message
    assert "version https://git-lfs" in f.message
    assert f.detail is not None and f.detail["header_len"] > MAX_HEADER_SIZE


def test_truncated_download_message_says_how_much_is_missing() -> None:
    whole = layout([("a", "F32", [64])])
    data = whole[:-100]
    _, (f,) = parse_header_bytes(data, len(data))
    assert f.code == "safetensors.incomplete_buffer"
    assert "100 missing" in f.message and "re-download" in f.message.lower()
    assert f.detail == {"expected": 256, "actual": 156}


def test_trailing_bytes_message() -> None:
    data = layout([("a", "F32", [4])]) + bytes(3)
    _, (f,) = parse_header_bytes(data, len(data))
    assert "3 bytes follow the last tensor" in f.message


def test_duplicate_name_message_shows_both_copies() -> None:
    data = blob(header(t("w", "F32", [4], 0, 16), t("w", "I32", [4], 0, 16)), bytes(16))
    _, findings = parse_header_bytes(data, len(data))
    (f,) = findings
    assert f.tensor == "w"
    assert "F32" in f.message and "I32" in f.message and "keeps the last" in f.message


def test_zero_filled_prefix_message() -> None:
    data = bytes(4096)
    _, (f,) = parse_header_bytes(data, len(data))
    assert f.code == "safetensors.invalid_json"
    assert "zero" in f.message and "Re-download" in f.message


def test_nul_padded_header_message() -> None:
    data = blob('{"a":{' + E + "}}\0\0\0\0", F4)
    _, (f,) = parse_header_bytes(data, len(data))
    assert "NUL bytes" in f.message


def test_invalid_offset_names_the_tensor_and_the_hole() -> None:
    data = blob(header(t("a", "F32", [1], 0, 4), t("b", "F32", [1], 8, 12)), bytes(12))
    _, (f,) = parse_header_bytes(data, len(data))
    assert f.tensor == "b"
    assert "hole of 4 bytes" in f.message
    assert f.detail == {"begin": 8, "end": 12, "expected_begin": 4}


def test_many_bad_tensors_give_one_bounded_finding() -> None:
    body = (
        "{"
        + ",".join(f'"t{i}":{{"dtype":"X{i}","shape":[0],"data_offsets":[0,0]}}' for i in range(5000))
        + "}"
    )
    data = blob(body)
    _, findings = parse_header_bytes(data, len(data))
    (f,) = findings
    assert f.code == "safetensors.unknown_dtype"
    assert f.detail is not None and f.detail["count"] == 5000 and len(f.detail["tensors"]) == 20
    assert "4999 more" in f.message


def test_label_prefixes_messages() -> None:
    _, (f,) = parse_header_bytes(b"", 0, label="shard.safetensors")
    assert f.message.startswith("shard.safetensors: ")
    _, (g,) = parse_header_bytes(b"", 0)
    assert not g.message.startswith(":")


# ---------------------------------------------------------------------------------------------------------
# Boundaries and reading.


def test_header_length_cap_is_inclusive() -> None:
    at_cap = blob(b"{}" + b" " * (MAX_HEADER_SIZE - 2))
    hdr, findings = parse_header_bytes(at_cap, len(at_cap))
    assert hdr is not None and hdr.tensors == ()
    assert _codes(findings, Severity.WARN) == {"safetensors.large_header", "safetensors.noncanonical_padding"}
    safetensors.deserialize(at_cap)  # the official reader agrees
    over = blob(b"", length=MAX_HEADER_SIZE + 1)  # step 3 comes before the header is needed
    _, findings = parse_header_bytes(over, 8 + MAX_HEADER_SIZE + 1)
    assert _codes(findings, Severity.FAIL) == {"safetensors.header_too_large"}


def test_large_header_warns_over_hub_limit(tmp_path: Path) -> None:
    body = '{"a":{' + E + "}}"
    data = blob(body + " " * (25_000_008 - len(body)), F4)
    hdr, findings = read_header(write(tmp_path, "big.safetensors", data))
    assert hdr is not None
    assert "safetensors.large_header" in _codes(findings, Severity.WARN)


def test_read_header_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = layout([("a", "F32", [1 << 18])])  # 1 MiB of data
    path = write(tmp_path, "m.safetensors", data)
    requested: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh: object) -> None:
            self._fh = fh

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self._fh.close()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self._fh, name)

        def read(self, n: int = -1) -> bytes:
            requested.append(n)
            return self._fh.read(n)  # type: ignore[attr-defined,no-any-return]

        def readinto(self, buf: memoryview) -> int:
            requested.append(len(buf))
            return self._fh.readinto(buf)  # type: ignore[attr-defined,no-any-return]

    import vcache.checks.safetensors as st_module

    monkeypatch.setattr(st_module, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    hdr, findings = read_header(path)
    assert hdr is not None and findings == []
    assert sum(requested) == 8 + hdr.header_len  # the header exactly: no tensor data
    assert all(n >= 0 for n in requested)


def test_read_header_never_reads_a_huge_declared_header(tmp_path: Path) -> None:
    # 8 + N fits the file, N is over the cap: nothing past the prefix is read (step 3 comes first).
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as fh:
        fh.write(blob(b"", length=MAX_HEADER_SIZE + 1))
        fh.truncate(MAX_HEADER_SIZE + 100)  # sparse: no real disk use
    _, findings = read_header(path)
    assert _codes(findings, Severity.FAIL) == {"safetensors.header_too_large"}


def test_unreadable_paths(tmp_path: Path) -> None:
    _, (missing,) = read_header(tmp_path / "nope.safetensors")
    assert missing.code == "safetensors.unreadable" and missing.severity is Severity.FAIL
    _, (folder,) = read_header(tmp_path)
    assert folder.code == "safetensors.unreadable"
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.safetensors"
        os.mkfifo(fifo)
        _, (pipe,) = read_header(fifo)  # must not block waiting for a writer
        assert pipe.code == "safetensors.unreadable"


def test_prefix_may_hold_the_whole_file_or_be_a_memoryview() -> None:
    data = layout([("a", "F32", [4])])
    hdr1, _ = parse_header_bytes(data, len(data))
    hdr2, _ = parse_header_bytes(memoryview(bytearray(data))[: 8 + hdr1.header_len], len(data))  # type: ignore[union-attr]
    assert hdr1 == hdr2


def test_prefix_shorter_than_declared_header() -> None:
    data = layout([("a", "F32", [4])])
    _, (f,) = parse_header_bytes(data[:20], len(data))
    assert f.code == "safetensors.invalid_header_length" and "changed while being read" in f.message


def test_hostile_headers_are_fast() -> None:
    hostile = [
        blob("[" * 20_000_000),
        blob('{"a":' * 4_000_000),
        blob('{"' + "a" * 20_000_000 + '":{' + E + "}}", F4),
        blob(with_entry('"x":' + "9" * 20_000_000), F4),
        blob('{"a":{"dtype":"F32","shape":[' + "1," * 5_000_000 + '1],"data_offsets":[0,4]}}', F4),
        blob(with_entry('"x":[' + "0," * 5_000_000 + "0]"), F4),
    ]
    # A guard against super-linear parsing (a quadratic pass over 20 MB would take hours), not a speed target:
    # CPU time of this thread, so a loaded machine does not fail it (wall-clock bounds did, under load), with
    # a bound ~10x what these 20 MB headers take here (0.1-1.0 s each).
    for data in hostile:
        start = time.thread_time()
        _, findings = parse_header_bytes(data, len(data))
        assert time.thread_time() - start < 10.0
        assert "safetensors.internal_error" not in {f.code for f in findings}


# ---------------------------------------------------------------------------------------------------------
# Files written by the safetensors library pass.

NUMPY_DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_writer_output_passes(dtype: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "scalar": np.asarray(rng.integers(0, 2), dtype=dtype),
        "vector": rng.integers(0, 2, size=7).astype(dtype),
        "matrix": rng.integers(0, 2, size=(3, 5)).astype(dtype),
        "empty": np.zeros((0, 4), dtype=dtype),
        "empty_rank3": np.zeros((2, 0, 3), dtype=dtype),
        "other": np.ones(3, dtype=np.float32),
    }
    path = tmp_path / "np.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "np"})
    hdr, findings = read_header(path)
    assert hdr is not None
    assert _codes(findings, Severity.FAIL) == set()
    assert _codes(findings, Severity.WARN) == {
        "safetensors.metadata_format"
    }  # "np" is not a transformers format
    loaded = safetensors.numpy.load_file(str(path))
    for entry_ in hdr.tensors:
        assert entry_.shape == loaded[entry_.name].shape
        assert entry_.nbytes == loaded[entry_.name].nbytes


def _torch_tensors() -> dict[str, object]:
    torch = pytest.importorskip("torch")
    import safetensors.torch as st

    out: dict[str, object] = {}
    dtypes = set(st._TYPES.values()) | {
        getattr(torch, "float8_e8m0fnu", None),
        getattr(torch, "float4_e2m1fn_x2", None),
    }
    for dtype in sorted((d for d in dtypes if d is not None), key=str):
        name = str(dtype).removeprefix("torch.")
        base = torch.zeros(4, 6, dtype=torch.uint8)
        if (dtype.is_floating_point and dtype.itemsize > 1) or dtype.is_complex:
            full = torch.randn(4, 6).to(dtype)
        elif dtype in (torch.bool,):
            full = base.bool()
        elif dtype.itemsize == 1 and dtype != torch.uint8 and dtype != torch.int8:
            full = base.view(dtype)  # the float8 / float4 formats: raw bytes
        else:
            full = torch.arange(24).reshape(4, 6).to(dtype)
        out[f"{name}.full"] = full
        out[f"{name}.empty"] = torch.empty((0, 6), dtype=dtype)
        if dtype != getattr(torch, "float4_e2m1fn_x2", None):
            out[f"{name}.scalar"] = full[0, 0].clone()
    return out


def test_torch_writer_output_passes(tmp_path: Path) -> None:
    tensors = _torch_tensors()
    import safetensors.torch as st

    path = tmp_path / "pt.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "pt"})
    hdr, findings = read_header(path)
    assert hdr is not None, [f.message for f in findings]
    assert findings == []
    written = {t.dtype for t in hdr.tensors}
    assert {"BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64", "BOOL", "U64"} <= written
    assert {"F8_E8M0", "F4"} <= written
    assert hdr.by_name["float32.scalar"].shape == ()
    assert hdr.by_name["float32.empty"].nbytes == 0
    with safetensors.safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == sorted(hdr.by_name)


def test_json_dumps_of_a_real_header_roundtrips() -> None:
    # The standard writer's output, re-created here: compact JSON, __metadata__ first, space padding.
    tensors = {"b": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}
    text = json.dumps({"__metadata__": {"format": "pt"}, **tensors}, separators=(",", ":"))
    data = blob(text + " " * (-len(text) % 8), bytes(4))
    hdr, findings = parse_header_bytes(data, len(data))
    assert findings == [] and hdr is not None and hdr.tensors[0].name == "b"
