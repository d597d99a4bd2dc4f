"""arraybridge 0.5's module of this name, for code that imports from it."""
from ._compat import _ensure_module, _supports_dlpack  # noqa: F401
