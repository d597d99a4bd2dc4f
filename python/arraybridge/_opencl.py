"""Loading the OpenCL drivers safely when TensorFlow (or any library exporting LLVM's symbols
to the whole process) is there too.

pocl, the OpenCL CPU driver, loads LLVM 15. TensorFlow loads its own LLVM with RTLD_GLOBAL, so
its symbols come first in the process's global scope. If TensorFlow was imported before an
OpenCL driver was first loaded, the driver's copy of LLVM registers its command-line options
through TensorFlow's functions (one registry, two layouts) and the process dies of a
segmentation fault inside dlopen: in arraybridge's runtime, in pyclesperanto, in pyopencl alike.
The other order is safe only if the driver's calls into its LLVM are all bound when it is
loaded: the ICD loader (and pyclesperanto's) opens drivers with lazy binding, so a function of
clang or LLVM that pocl first calls after TensorFlow arrived (compiling a kernel that is not in
pocl's cache, say) is looked up then, found in TensorFlow's copy first, and crashes there.

So, before the first OpenCL use (a runtime opening OpenCL devices, an import of pyclesperanto
or pyopencl) and whenever TensorFlow is about to be imported, the drivers named by the OpenCL
ICD files are loaded here first:
  * no clashing LLVM in the global scope yet: loaded with RTLD_NOW, which binds every call of
    the driver and of the libraries it brings (clang, LLVM) to its own copy at once (about
    30 ms), so that nothing is left for a later TensorFlow to capture;
  * one there already: loaded with RTLD_DEEPBIND, so that the driver and its LLVM resolve
    their symbols among themselves first. Later loads of the same driver (by the ICD loader,
    by pyclesperanto) get this copy;
  * one there, and RTLD_DEEPBIND unusable (malloc is not the C library's: a sanitizer or an
    allocator was preloaded, and a deep-bound library would free with another allocator than
    the one that allocated): OpenCL is left alone, runtimes open no OpenCL device, and a
    warning says why, once.
The orders that stay out of reach are those in which a driver was loaded, lazily, before
arraybridge was imported: pyclesperanto before arraybridge and TensorFlow (it loads the driver
at import), and TensorFlow then pyclesperanto before arraybridge (which crashes in
pyclesperanto's own import).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.abc
import os
import sys
import threading
import warnings
from typing import List, Optional

_CLASH_SYMBOL = "_ZN4llvm2cl6Option11addArgumentEv"  # llvm::cl::Option::addArgument()
_lock = threading.RLock()
_unsafe: Optional[str] = None  # why OpenCL must not be loaded in this process, once known
_warned = False


def vendor_libraries() -> List[str]:
    """The driver libraries the OpenCL ICD loader will open, as it names them."""
    names = [n for n in os.environ.get("OCL_ICD_FILENAMES", "").split(":") if n]
    vendors = os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors")
    icds = sorted(glob.glob(os.path.join(vendors, "*.icd"))) if os.path.isdir(vendors) else \
        ([vendors] if vendors.endswith(".icd") and os.path.isfile(vendors) else [])
    for icd in icds:
        try:
            with open(icd) as f:
                line = f.readline().strip()
        except OSError:
            continue
        if line and line not in names:
            names.append(line)
    return names


def _loaded(name: str) -> bool:
    try:
        ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return True
    except OSError:
        return False


def _global_address(name: str) -> Optional[int]:
    try:
        return ctypes.cast(getattr(ctypes.CDLL(None), name), ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None


def clashing_llvm() -> bool:
    """Whether a library in the process's global scope exports LLVM's option registry."""
    return _global_address(_CLASH_SYMBOL) is not None


def _deepbind_safe() -> bool:
    """A deep-bound library calls the C library's malloc and free: safe only if everybody does."""
    if not hasattr(os, "RTLD_DEEPBIND"):
        return False
    try:
        own = ctypes.cast(ctypes.CDLL("libc.so.6").malloc, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return False
    return _global_address("malloc") == own


def prepare(load_now: bool = False) -> Optional[str]:
    """Make the first load of the OpenCL drivers safe. Returns None when OpenCL may be used,
    else why not. load_now: load them now even without a clash (OpenCL is about to be used, or
    TensorFlow imported: loading them first, bound, is the safe order)."""
    global _unsafe
    with _lock:
        if _unsafe is not None:
            return _unsafe
        libs = vendor_libraries()
        if not libs or any(_loaded(n) for n in libs):
            return None  # no driver, or loaded already: by us, bound, or lazily before arraybridge came
        clash = clashing_llvm()
        if not clash and not load_now:
            return None  # the runtime's first OpenCL call loads them in the safe order
        mode = os.RTLD_NOW | os.RTLD_LOCAL
        if clash:
            if not _deepbind_safe():
                _unsafe = ("a library loaded earlier (TensorFlow?) exports LLVM's symbols to the whole process, "
                           "and the OpenCL driver's own LLVM would crash against them; RTLD_DEEPBIND, which "
                           "would keep them apart, cannot be used with a preloaded allocator or sanitizer. "
                           "Import arraybridge (or pyclesperanto) before tensorflow to use OpenCL.")
                return _unsafe
            mode |= os.RTLD_DEEPBIND
        for name in libs:
            try:
                ctypes.CDLL(name, mode=mode)  # kept loaded for the life of the process
            except OSError:
                pass  # the ICD loader will not manage either, and says so itself
        return None


def opencl_refused() -> Optional[str]:
    """prepare() before a runtime opens OpenCL (the drivers loaded and bound now), warning once
    when OpenCL has to be left out."""
    global _warned
    why = prepare(load_now=True)
    if why and not _warned:
        _warned = True
        warnings.warn(f"arraybridge: no OpenCL devices in this process: {why}", RuntimeWarning, stacklevel=3)
    return why


# Imports that load an OpenCL driver (pyclesperanto does at import, with lazy binding) or an LLVM
# that clashes with the driver's (TensorFlow): the drivers are loaded, bound, just before.
_TRIGGERS = frozenset({"tensorflow", "pyclesperanto", "pyclesperanto_prototype", "pyclesperanto_opencl",
                       "pyopencl"})


class _BeforeTensorFlow(importlib.abc.MetaPathFinder):
    """Loads the OpenCL drivers just before TensorFlow or an OpenCL library is first imported
    (the safe order), then steps aside."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname in _TRIGGERS:
            uninstall()
            prepare(load_now=True)
        return None


_finder = _BeforeTensorFlow()


def uninstall() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """At import of arraybridge: make every later OpenCL load safe, whatever comes next."""
    if clashing_llvm():
        prepare()  # TensorFlow is in already: load the drivers apart from it now
    elif "tensorflow" not in sys.modules and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
