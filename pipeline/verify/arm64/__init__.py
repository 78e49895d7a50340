"""The ARM64 gate: the aarch64 runtimes under QEMU user-mode (env.py provisions the emulation, emulate.py runs the
files there through the one validation path)."""
