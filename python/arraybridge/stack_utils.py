"""arraybridge 0.5's module of this name, for code that imports from it."""
from .stack import stack_slices, unstack_slices  # noqa: F401
