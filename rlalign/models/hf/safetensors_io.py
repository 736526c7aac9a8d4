"""A small safetensors reader (``mmap`` + the JSON header) and a streaming writer.

The format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), an optional ``"__metadata__"`` dict of strings, then the raw little-endian data.

Reading maps the file and hands out numpy views on it, so a tensor costs no copy until the
caller converts it; :meth:`SafetensorsFile.release` drops a tensor's pages from this process's
resident set once it has been copied out. bfloat16 comes through ``ml_dtypes``. Every tensor's
byte range is checked against the file size when the file is opened, so a truncated file fails
up front, naming the tensor and the bytes it lacks.

Writing takes each tensor's name, shape and dtype first and its data from a callback, one
tensor at a time, so a model is never held twice in host memory while it is written.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from typing import Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

import ml_dtypes
import numpy as np

DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
CODES: Dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
_PAGE = mmap.PAGESIZE


class SafetensorsError(ValueError):
  """A malformed or truncated safetensors file; the message names the file and tensor."""


class TensorInfo(NamedTuple):
  dtype: np.dtype
  shape: Tuple[int, ...]
  begin: int  # absolute byte offsets in the file
  end: int


class SafetensorsFile:
  """Read-only, memory-mapped access to one ``.safetensors`` file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size < 8:
        raise SafetensorsError(f"{path}: truncated safetensors file: {size} bytes, fewer than the "
                               "8 that hold the header length")
      (n,) = struct.unpack("<Q", f.read(8))
      if 8 + n > size:
        raise SafetensorsError(f"{path}: truncated safetensors file: the header needs bytes "
                               f"[8, {8 + n}) but the file has {size} bytes")
      try:
        header = json.loads(f.read(n))
      except ValueError as e:
        raise SafetensorsError(f"{path}: the safetensors header is not valid JSON ({e})") from None
      self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
      self.tensors: Dict[str, TensorInfo] = {}
      start = 8 + n
      for name, info in header.items():
        code = info.get("dtype")
        if code not in DTYPES:
          raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {code!r}; "
                                 f"supported: {sorted(DTYPES)}")
        dtype, shape = DTYPES[code], tuple(int(d) for d in info["shape"])
        begin, end = (start + int(o) for o in info["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize:
          raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} and dtype {code} "
                                 f"needs {math.prod(shape) * dtype.itemsize} bytes but its "
                                 f"data_offsets span {end - begin}")
        if end > size:
          raise SafetensorsError(f"{path}: truncated safetensors file: tensor {name!r} needs "
                                 f"bytes [{begin}, {end}) but the file has only {size} bytes "
                                 f"(it ends {end - size} bytes short)")
        self.tensors[name] = TensorInfo(dtype, shape, begin, end)
      self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None

  def keys(self):
    return self.tensors.keys()

  def get(self, name: str) -> np.ndarray:
    """A read-only view of the tensor on the mapped file (no copy)."""
    info = self.tensors[name]
    count = math.prod(info.shape)
    if not count:
      return np.zeros(info.shape, info.dtype)
    return np.frombuffer(self._mm, info.dtype, count, info.begin).reshape(info.shape)

  def release(self, name: str, begin: int = 0, end: Optional[int] = None) -> None:
    """Drops the tensor's pages (or those of its bytes [begin, end)) from this process's
    resident set; they stay in the file and fault back in if read again."""
    info = self.tensors[name]
    lo = info.begin + begin
    hi = info.end if end is None else min(info.end, info.begin + end)
    lo -= lo % _PAGE
    if self._mm is not None and hi > lo and hasattr(self._mm, "madvise"):
      self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

  def close(self) -> None:
    if self._mm is not None:
      try:
        self._mm.close()
      except BufferError:  # a caller still holds a view; the map closes when it is dropped
        pass
      self._mm = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class TensorToWrite(NamedTuple):
  name: str
  shape: Tuple[int, ...]
  dtype: np.dtype
  fetch: Callable[[], np.ndarray]  # called once, when the tensor's bytes are written


def tensor_nbytes(shape: Tuple[int, ...], dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize


def write_safetensors(path: str, tensors: Iterable[TensorToWrite],
                      metadata: Optional[Mapping[str, str]] = None) -> int:
  """Writes ``tensors`` in order, fetching each one's data only when it is written.

  Returns the number of data bytes written.
  """
  tensors = list(tensors)
  header, offset = {}, 0
  for t in tensors:
    dtype = np.dtype(t.dtype)
    if dtype not in CODES:
      raise SafetensorsError(f"{path}: tensor {t.name!r} has dtype {dtype}, which safetensors "
                             "cannot store")
    nbytes = tensor_nbytes(t.shape, dtype)
    header[t.name] = {"dtype": CODES[dtype], "shape": list(t.shape),
                      "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for t in tensors:
      a = np.ascontiguousarray(t.fetch())
      if a.shape != tuple(t.shape) or a.dtype != np.dtype(t.dtype):
        raise SafetensorsError(f"{path}: tensor {t.name!r} was declared {tuple(t.shape)} "
                               f"{np.dtype(t.dtype)} but is {a.shape} {a.dtype}")
      f.write(a.reshape(-1).view(np.uint8).data)
    f.flush()
    os.fsync(f.fileno())
  return offset
