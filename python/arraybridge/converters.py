"""arraybridge 0.5's module of this name, for code that imports from it."""
from .convert import convert_memory, detect_memory_type  # noqa: F401
