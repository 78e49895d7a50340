"""The drift gate over a bundled artifact folder (`python -m pipeline validate`): the folder's integrity
(folder.py), then the one validation path (pipeline/verify/validation.py) on its files (validate.py), and what
serves only the gate: localization of int8 drift (localize.py) and the float fallback (fallback.py), which
lowers through pipeline/lower like the build.
"""
