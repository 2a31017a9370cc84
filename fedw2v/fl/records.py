"""Conversions between Flower's ArrayRecord and named numpy arrays (weights travel by state-dict key).

`arrays_from_record` returns read-only *views* of the received bytes (no copy): a round's updates cost their
received size once, not twice as with `Array.numpy()`, which deserialises into a fresh array.

Packed records (``record_from_arrays(..., packed=True)``): the arrays of one dtype travel as one flat `Array`,
whose key names every state-dict key it holds and its shape, in order (``PACKED`` + JSON), so the names still
travel with the weights and `arrays_from_record` gives the same {key: view} back. Flower moves every `Array` of a
message as objects of their own (one request per object and hop: server → SuperLink → SuperNode → ClientApp and
back), so a wav2vec2 model's ~80-420 arrays cost that many requests four times per message, packed ~1 (plus one
per 5 MiB chunk either way). Flower's DP mods work on packed records as they are: the update's L2 norm over one
flat vector is its norm over all arrays, the noise is per element either way, and an incoming and a reply record
of the same weights have the same key. Packing copies the arrays once into the flat one (one model's worth of
memory while the message is built).
"""

from __future__ import annotations

import io
import json
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


PACKED = "fedw2v-packed:"  # the key of a packed array: this, then JSON [[state-dict key, shape], ...]


def arrays_from_record(record: Any) -> dict[str, Any]:
    """ArrayRecord (packed or not) -> {state-dict key: read-only numpy view}."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key.startswith(PACKED):
            out.update(_unpack(key, array_view(value)))
        else:
            out[key] = array_view(value)
    return out


def record_from_arrays(arrays: Mapping[str, Any], packed: bool = False) -> Any:
    """{state-dict key: numpy array or torch tensor} -> ArrayRecord (keys kept, order kept): one `Array` per key,
    or ``packed``, one per dtype (see the module)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    out = ArrayRecord()
    groups: dict[str, dict[str, Any]] = {}
    for key, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.ascontiguousarray(value)
        if packed:
            groups.setdefault(value.dtype.str, {})[key] = value
        else:
            out[key] = Array(value)
    for group in groups.values():
        layout = json.dumps([[key, list(value.shape)] for key, value in group.items()], separators=(",", ":"))
        out[PACKED + layout] = Array(np.concatenate([value.reshape(-1) for value in group.values()]))
    return out


def is_packed(record: Any) -> bool:
    return any(key.startswith(PACKED) for key in record.keys())


def _unpack(key: str, flat: Any) -> dict[str, Any]:
    """The named views into one packed array (``flat``, 1-D) that its key lists; ValueError when they do not
    tile it exactly."""
    import math

    try:
        layout = json.loads(key[len(PACKED):])
        shapes = [(str(name), tuple(int(n) for n in shape)) for name, shape in layout]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a packed array's layout is not [[name, shape], ...] ({exc})") from None
    sizes = [math.prod(shape) for _, shape in shapes]
    if flat.ndim != 1 or sum(sizes) != flat.size:
        raise ValueError(f"a packed array holds {flat.size} values where its layout names {sum(sizes)}")
    out, at = {}, 0
    for (name, shape), size in zip(shapes, sizes):
        out[name] = flat[at: at + size].reshape(shape)
        at += size
    return out
