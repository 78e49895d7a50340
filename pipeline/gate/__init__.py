"""The drift gate over a bundled artifact folder (`python -m pipeline validate`) and what serves only it:
localization of int8 drift (localize.py) and the float fallback (fallback.py)."""
from pipeline.gate.folder import validate_folder

__all__ = ["validate_folder"]
