"""arraybridge 0.5's module of this name, for code that imports from it."""
from .stack import process_slices  # noqa: F401
