"""The screening pipeline's steps as plain functions over real frameworks (NumPy, torch, SciPy),
shared by examples/screen.py (on arraybridge.Executor), examples/dask_screen.py and the
benchmark peer (arraybridge from PyPI on a ThreadPoolExecutor), so both sides do the same work.

A plate is wells x sites z-stacks of uint16 slices: cells are Gaussian blobs whose brightness
follows a focal profile along z, on a background, with Poisson noise; everything is seeded.
Steps per stack: stack slices -> normalise by percentiles -> Gaussian filter -> max projection
-> threshold (mean + 2 sd) and count connected objects.
"""
import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the functions that need torch say so when called
    torch = None


def make_stack(well, site, z=16, size=(256, 256), seed=0, cells=40):
    """One z-stack: a list of z uint16 slices of `size`."""
    rng = np.random.default_rng([seed, well, site])
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.zeros((h, w), np.float32)
    for cy, cx, r, a in zip(rng.uniform(0, h, cells), rng.uniform(0, w, cells), rng.uniform(3, 8, cells),
                            rng.uniform(800, 3000, cells)):
        y0, y1, x0, x1 = int(max(cy - 4 * r, 0)), int(min(cy + 4 * r, h)), int(max(cx - 4 * r, 0)), int(min(cx + 4 * r, w))
        base[y0:y1, x0:x1] += a * np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * r * r))
    focus = np.exp(-((np.arange(z) - z / 2) ** 2) / (2 * (z / 4) ** 2))
    return [rng.poisson(200 + base * f).clip(0, 65535).astype(np.uint16) for f in focus]


def make_plate(wells=8, sites=2, z=16, size=(256, 256), seed=0):
    """[(well, site, slices), ...] for the whole plate."""
    return [(w, s, make_stack(w, s, z, size, seed)) for w in range(wells) for s in range(sites)]


def normalise(vol):
    """uint16 [z, y, x] torch tensor -> float32 in [0, 1] between its 1st and 99th percentiles."""
    v = vol.to(torch.float32)
    flat = v.flatten()
    sample = flat[:: max(1, flat.numel() // 65536)]  # percentiles of a strided sample, as imaging tools do
    lo, hi = torch.quantile(sample, torch.tensor([0.01, 0.99]))
    return ((v - lo) / max(float(hi - lo), 1e-6)).clamp_(0, 1)


_KERNEL = None


def gaussian(vol, sigma=1.5):
    """A separable Gaussian filter over every slice of a float32 [z, y, x] torch tensor."""
    global _KERNEL
    if _KERNEL is None:
        x = torch.arange(-4, 5, dtype=torch.float32)
        k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
        _KERNEL = k / k.sum()
    k = _KERNEL
    v = vol[:, None]
    v = F.conv2d(F.pad(v, (4, 4, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    v = F.conv2d(F.pad(v, (0, 0, 4, 4), mode="replicate"), k.view(1, 1, -1, 1))
    return v[:, 0]


def project(vol):
    """Maximum intensity projection along z."""
    return torch.amax(vol, dim=0)


def count(img):
    """(objects, mean intensity, foreground fraction) of a float32 2-D NumPy image."""
    from scipy import ndimage
    t = img.mean() + 2 * img.std()
    mask = img > t
    _, n = ndimage.label(mask)
    return int(n), float(img.mean()), float(mask.mean())


def run_stack(vol):
    """All the steps on one stacked volume (the peer's way: one task per stack)."""
    return count(project(gaussian(normalise(vol))).numpy())
