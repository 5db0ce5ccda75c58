"""Integrations with the libraries that read what vcache downloads.

``transformers``: the verified ``from_pretrained`` path (pull and verify, refuse incomplete checkpoints before
any weight bytes are read, check the loaded weights). Importing this package imports nothing heavy: torch and
transformers are imported inside the functions that need them, never at import time.
"""
