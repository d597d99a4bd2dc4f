"""arraybridge 0.5's module of this name, for code that imports from it."""
from ._compat import ConversionCounters, ConversionObserver, ConversionRecord, ConversionRoute  # noqa: F401
