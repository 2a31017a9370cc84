"""Conversions between Flower's ArrayRecord and named numpy arrays (weights travel by state-dict key).

`arrays_from_record` returns read-only *views* of the received bytes (no copy): a round's updates cost their
received size once, not twice as with `Array.numpy()`, which deserialises into a fresh array.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any


def array_view(array: Any) -> Any:
    """A read-only numpy view of a Flower `Array` serialised as .npy bytes (falls back to `Array.numpy()`)."""
    import numpy as np

    data = array.data
    try:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        if dtype.hasobject:
            raise ValueError("object arrays are never loaded")
        count = int(np.prod(shape)) if shape else 1
        view = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
        return view.reshape(shape, order="F" if fortran else "C")
    except (ValueError, AttributeError):
        return array.numpy()


def arrays_from_record(record: Any) -> dict[str, Any]:
    """ArrayRecord -> {state-dict key: read-only numpy view}."""
    return {key: array_view(value) for key, value in record.items()}


def record_from_arrays(arrays: Mapping[str, Any]) -> Any:
    """{state-dict key: numpy array or torch tensor} -> ArrayRecord (keys kept, order kept)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    out = ArrayRecord()
    for key, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[key] = Array(np.ascontiguousarray(value))
    return out
