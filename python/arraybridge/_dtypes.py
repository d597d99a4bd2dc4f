"""DLPack dtypes (code, bits, lanes) and NumPy dtypes, both ways."""
import numpy as _np

INT, UINT, FLOAT, BFLOAT, COMPLEX, BOOL = 0, 1, 2, 4, 5, 6
_KIND_TO_CODE = {"i": INT, "u": UINT, "f": FLOAT, "c": COMPLEX, "b": BOOL}
_CODE_TO_KIND = {v: k for k, v in _KIND_TO_CODE.items()}


def to_dl(dtype):
    """A NumPy-compatible dtype (or its name) as a DLPack (code, bits, lanes) triple."""
    if dtype is None:
        return None
    if isinstance(dtype, tuple):
        return dtype
    dt = _np.dtype(dtype)
    if dt.byteorder == ">":
        raise ValueError(f"big-endian dtype {dt} is not supported; byteswap it first")
    code = _KIND_TO_CODE.get(dt.kind)
    if code is None:
        raise TypeError(f"dtype {dt} has no DLPack equivalent")
    return (code, dt.itemsize * 8, 1)


def to_numpy(dl):
    """A DLPack (code, bits, lanes) triple as a NumPy dtype."""
    code, bits, lanes = dl
    kind = _CODE_TO_KIND.get(code)
    if kind is None or lanes != 1:
        raise TypeError(f"DLPack dtype {dl} has no NumPy equivalent")
    return _np.dtype(f"{kind}{bits // 8}") if kind != "b" else _np.dtype(bool)


def name(dl):
    try:
        return to_numpy(dl).name
    except TypeError:
        return f"dl{dl}"


def of(x):
    """The NumPy dtype of any framework's array (torch.uint16 -> uint16), or None."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return None
    try:
        return _np.dtype(dt)
    except TypeError:
        name = getattr(dt, "name", None) or str(dt).rsplit(".", 1)[-1]
        try:
            return _np.dtype(name)
        except TypeError:
            return None
