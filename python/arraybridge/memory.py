"""Memory statistics and cleanup, across the runtime and the loaded frameworks."""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from . import _oom, _runtime
from ._runtime import device_name


def memory_stats(rt: Optional[Any] = None) -> Dict[str, Any]:
    """Per-device runtime counters (used, peak, budget, the OOM ladder's steps) and, for each
    loaded GPU framework, what its allocator holds."""
    rt = rt or _runtime._default
    out = {"runtime": {}}
    if rt is not None and not rt.closed:
        for s in rt.stats():
            out["runtime"][device_name(s["device"])] = s
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["torch"] = {f"cuda:{i}": {"allocated": torch.cuda.memory_allocated(i),
                                      "reserved": torch.cuda.memory_reserved(i)}
                        for i in range(torch.cuda.device_count())}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        pool = cupy.get_default_memory_pool()
        out["cupy"] = {"used": pool.used_bytes(), "total": pool.total_bytes()}
    return out


def cleanup_all_gpu_frameworks(device_id: Optional[int] = None) -> List[str]:
    """Free the caches of every GPU framework already imported (torch's and cupy's memory pools,
    jax's compiled executables; TensorFlow keeps none) and collect garbage (arraybridge 0.2.9's
    version looked the modules up in the wrong namespace and never freed anything). Returns the
    names of the frameworks it cleaned."""
    names = [n for n in _oom._CLEARERS if n in sys.modules]
    _oom.clear_cache(None, device_id)
    return names

