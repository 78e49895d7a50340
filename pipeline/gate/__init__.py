"""The drift gate over a bundled artifact folder (`python -m pipeline validate`) and what serves only it:
localization of int8 drift (localize.py), the float fallback (fallback.py), and the ARM64 check under QEMU
(arm64.py; arm64_env.py provisions the emulation, arm64_worker.py runs inside it).

Importing this package is light on purpose: arm64_worker runs inside an emulated aarch64 Python where only numpy
and the runtimes are installed.
"""


def validate_folder(args, log=print) -> int:
    from pipeline.gate.folder import validate_folder as run

    return run(args, log)


__all__ = ["validate_folder"]
