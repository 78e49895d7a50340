"""Verification: the one validation path (validation.py), tokenizer drift, reports, and the ARM64 run under QEMU
(arm64/). Importing this package is light: nothing here imports torch at module level."""
