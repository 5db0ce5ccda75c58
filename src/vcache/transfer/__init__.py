"""One file's bytes from the Hub (or its CDN) into a resumable partial on disk, hashed as they arrive."""

from vcache.transfer._fetch import ByteObserver, FetchResult, FetchSpec, Transfer

__all__ = ["ByteObserver", "FetchResult", "FetchSpec", "Transfer"]
