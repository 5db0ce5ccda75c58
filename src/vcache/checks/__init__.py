"""File checks: what is wrong with a file, as findings.

``sniff`` (pointer / HTML / zero-filled files), ``safetensors`` (strict header and layout), ``tensors``
(content scan on raw bits) and ``index`` (sharded index and config coherence). Checks only read; they
never move, delete or fix a file, and they never raise on bad input: every problem is a Finding.
"""
