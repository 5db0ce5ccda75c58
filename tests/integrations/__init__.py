"""Tests for vcache.integrations (transformers, PEFT)."""
