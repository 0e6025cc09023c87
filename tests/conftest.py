"""Shared test setup: Triton runs under its CPU interpreter unless a GPU run asks otherwise."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported
