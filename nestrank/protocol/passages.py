"""Pooled passage states: the one type (`PassageStates`) and the one codec that the wire, the server's store and
first-level cache, and the `.npz` files clients keep all use.

A passage is its MEP states [G, H] and per-group token counts [G] at a compression ratio. States are float16
wherever they are computed on or sent (means are computed in float32 and rounded once per pooling); a store (and
the first level in front of it) may hold them as int8, which the server then scores as stored (`as_stored`) even
when it has just encoded them. So every path to a passage (encoded now, read from a store, sent by a client)
scores the same.

- Wire: N passages travel ragged, as they are held: states [ΣG, H] float16, counts [ΣG] int32 and groups per
  passage [N] (`reranking.wire_tensors` / `from_wire`). `padded` / `from_padded` ([N, G_max, H], [N, G_max], a
  count of 0 marking padding) are for MEP's re-pooling (the scorer pads its own runs, right before ONNX Runtime).
- Store: one value is `to_bytes(states)`, a versioned header (magic, version, dtype, ratio, passages, groups,
  width, tokens, a CRC-32 of the body, the model's passage fingerprint) and the arrays; `from_bytes` reads it back
  and refuses anything that fails the header or the checksum (`CorruptStates`). A store holds states as float16
  (dtype code 1: offsets, counts, states; decoded without copies) or int8 (code 2: offsets, counts, one float32
  scale per group, int8 states; decoded to float16 in one pass, counts and offsets still views).
- Files: `save` / `load` (.npz), fingerprint included.

The passage fingerprint names the model that made the states (its encoder weights, tokenizer, passage template,
max passage length and pooling code): states of one model are never scored by another.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATE_DTYPE = np.float16
FINGERPRINT = re.compile(r"[0-9a-f]{32}")  # 128 bits, hex

MAGIC = b"NRPS"
VERSION = 1  # int8 came as a new dtype code, not a new version: readers of version 1 refuse codes they lack
STATE_FORMATS = ("float16", "int8")  # how a store holds states: `?states=` of a store URL, `--passage-states`
_CODES = {"float16": 1, "int8": 2}  # the header's dtype byte
_FORMATS = {code: name for name, code in _CODES.items()}
_STATE_ITEMSIZE = {1: 2, 2: 1}
_SCALE_BYTES = {1: 0, 2: 4}  # per group: int8 rows carry a float32 scale
INT8_MAX = 127  # symmetric: -127..127, so that -x quantizes to -q
# magic, version, dtype, ratio, passages, groups, width, tokens, crc32 of the body, fingerprint, 4 reserved bytes
_HEADER = struct.Struct("<4sBBHIIIII16s4x")
HEADER_BYTES = _HEADER.size  # 48: the body's int64 offsets start 8-aligned


class CorruptStates(ValueError):
    """A stored value that is not whole, not ours, or not what its key promised: read it as a miss."""


def check_states_format(states: str) -> str:
    if states not in _CODES:
        raise ValueError(f"passage states are held as one of {', '.join(STATE_FORMATS)}, got {states!r}")
    return states


def quantize_int8(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[G, H] float → ([G, H] int8, [G] float32 scales): symmetric, one scale per group row (max |x| / 127), so
    that a row's error is at most half its scale. Float32 scales, not float16: exact for any float16 row (no
    underflow for tiny rows, no overflow past 65504 × 127), 4-byte aligned after the counts, and 0.6% of a row
    at H = 640."""
    x = np.asarray(states, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("int8 passage states need finite values")
    scales = (np.abs(x).max(axis=1, initial=0.0) / INT8_MAX).astype(np.float32)
    divisors = np.where(scales > 0, scales, np.float32(1))[:, None]  # an all-zero row stays zeros
    return np.clip(np.rint(x / divisors), -INT8_MAX, INT8_MAX).astype(np.int8), scales


def dequantize_int8(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float16 states the scorer reads: q × scale in float32, rounded to float16 once."""
    return np.multiply(quantized, scales[:, None], dtype=np.float32).astype(STATE_DTYPE)


def check_fingerprint(fingerprint: str) -> str:
    if fingerprint and not FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"a passage fingerprint is 32 lowercase hex digits, got {fingerprint[:40]!r}")
    return fingerprint


@dataclass(frozen=True)
class PassageStates:
    """N pooled passages at one ratio, ragged: passage i is states[offsets[i]:offsets[i+1]] with its per-group
    token counts. `ids` are content ids (a hash of each document's text) when known; `fingerprint` is the passage
    fingerprint of the model that encoded them ("" when unknown: files written before fingerprints existed)."""

    states: np.ndarray  # [sum of groups, H] float16
    counts: np.ndarray  # [sum of groups] int32
    offsets: np.ndarray  # [N + 1] int64
    ratio: int
    ids: tuple[str, ...] = ()
    fingerprint: str = ""

    def __post_init__(self):
        if self.states.ndim != 2 or self.counts.shape != self.states.shape[:1] or self.offsets.ndim != 1:
            raise ValueError(f"states [G, H], counts [G] and offsets [N + 1]; got {self.states.shape}, "
                             f"{self.counts.shape}, {self.offsets.shape}")  # fmt: skip
        if len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.counts):
            raise ValueError("offsets must run from 0 to the number of groups")
        if self.ids and len(self.ids) != len(self):
            raise ValueError(f"{len(self.ids)} ids for {len(self)} passages")
        check_fingerprint(self.fingerprint)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def width(self) -> int:
        return self.states.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        """Groups per passage."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return self.states.nbytes + self.counts.nbytes + self.offsets.nbytes

    def passage(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Passage i's (states [G, H], counts [G]), views."""
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.states[start:end], self.counts[start:end]

    # -- building ---------------------------------------------------------------------------------------------

    @classmethod
    def from_passages(cls, passages: Sequence[tuple[np.ndarray, np.ndarray]], ratio: int, ids: Sequence[str] = (),
                      fingerprint: str = "", width: int | None = None, dtype=STATE_DTYPE) -> PassageStates:  # fmt: skip
        """From (states [G, H], counts [G]) pairs; states are rounded to float16 once, here (another `dtype` is for
        measuring what that rounding costs, never for serving)."""
        sizes = [len(c) for _, c in passages]
        width = passages[0][0].shape[1] if passages else (width or 0)
        states = np.concatenate([s for s, _ in passages]) if passages else np.zeros((0, width))
        counts = np.concatenate([c for _, c in passages]) if passages else np.zeros(0)
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(states.astype(dtype, copy=False), counts.astype(np.int32, copy=False), offsets, ratio,
                   tuple(ids), fingerprint)  # fmt: skip

    @classmethod
    def from_padded(cls, states: np.ndarray, counts: np.ndarray, ratio: int, ids: Sequence[str] = (),
                    fingerprint: str = "") -> PassageStates:  # fmt: skip
        """Zero-padded [N, G, H] / [N, G] (MEP's pooled output) → passages without their trailing empty groups."""
        valid = counts > 0
        ends = np.where(valid.any(axis=1), counts.shape[1] - np.argmax(valid[:, ::-1], axis=1), 0)
        return cls.from_passages([(s[:e], c[:e]) for s, c, e in zip(states, counts, ends)], ratio, ids, fingerprint,
                                 width=states.shape[-1])  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[PassageStates]) -> PassageStates:
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({p.ratio for p in parts}) != 1 or len({p.fingerprint for p in parts}) != 1:
            raise ValueError("cannot concatenate states of different ratios or models")
        ids = [i for p in parts for i in p.ids]
        if ids and len(ids) != sum(len(p) for p in parts):
            raise ValueError("some parts have ids and some do not")
        sizes = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(np.concatenate([p.states for p in parts]), np.concatenate([p.counts for p in parts]), offsets,
                   parts[0].ratio, tuple(ids), parts[0].fingerprint)  # fmt: skip

    def slice(self, start: int, end: int) -> PassageStates:
        """Passages start..end-1, views (no copies)."""
        first, last = int(self.offsets[start]), int(self.offsets[end])
        return PassageStates(self.states[first:last], self.counts[first:last], self.offsets[start : end + 1] - first,
                             self.ratio, self.ids[start:end], self.fingerprint)  # fmt: skip

    def subset(self, indices: Sequence[int]) -> PassageStates:
        ids = [self.ids[i] for i in indices] if self.ids else ()
        return PassageStates.from_passages([self.passage(i) for i in indices], self.ratio, ids, self.fingerprint,
                                           width=self.width, dtype=self.states.dtype)  # fmt: skip

    # -- padded, for MEP -----------------------------------------------------------------------------------------

    def padded(self, indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[n, G_max, H] float16 states and [n, G_max] int32 counts (all passages, or those at `indices`),
        zeros past each passage's groups (MEP re-pools them)."""
        indices = range(len(self)) if indices is None else indices
        lengths = self.lengths
        longest = max((int(lengths[i]) for i in indices), default=0)
        states = np.zeros((len(indices), longest, self.width), dtype=STATE_DTYPE)
        counts = np.zeros((len(indices), longest), dtype=np.int32)
        for row, i in enumerate(indices):
            s, c = self.passage(i)
            states[row, : len(c)] = s
            counts[row, : len(c)] = c
        return states, counts

    # -- a store's value --------------------------------------------------------------------------------------

    def as_stored(self, states: str) -> PassageStates:
        """These passages as a store holding `states` gives them back (bit for bit what `from_bytes` of
        `to_bytes(states)` decodes), so that a passage scores the same encoded now or read later."""
        if check_states_format(states) == "float16":
            return self
        return dataclasses.replace(self, states=dequantize_int8(*quantize_int8(self.states)))

    def to_bytes(self, states: str = "float16") -> bytes:
        code = _CODES[check_states_format(states)]
        if code == 1:
            arrays = (self.states.astype("<f2").tobytes(),)
        else:
            quantized, scales = quantize_int8(self.states)
            arrays = (scales.astype("<f4").tobytes(), quantized.tobytes())
        body = b"".join((self.offsets.astype("<i8").tobytes(), self.counts.astype("<i4").tobytes(), *arrays))
        header = _HEADER.pack(
            MAGIC,
            VERSION,
            code,
            self.ratio,
            len(self),
            len(self.counts),
            self.width,
            int(self.counts.sum()),
            zlib.crc32(body),
            bytes.fromhex(self.fingerprint or "0" * 32),
        )
        return header + body

    @classmethod
    def from_bytes(cls, value: bytes | memoryview, fingerprint: str | None = None, ratio: int | None = None,
                   verify: bool = True, states: str | None = None) -> PassageStates:  # fmt: skip
        """A value written by `to_bytes`: counts, offsets and float16 states are views of `value` (no copies); int8
        states are dequantized to float16 (one copy). Raises CorruptStates when the header, the checksum, or the
        model (`fingerprint`), `ratio` and `states` format the caller expects do not match. `verify=False` skips
        the checksum and the count checks, for values this process verified already."""
        if len(value) < HEADER_BYTES:
            raise CorruptStates(f"{len(value)} bytes: shorter than the header")
        magic, version, dtype, stored_ratio, n, groups, width, tokens, crc, raw_fingerprint = _HEADER.unpack_from(value)
        if magic != MAGIC or version != VERSION or dtype not in _FORMATS:
            raise CorruptStates(f"not a passage-state value of version {VERSION} (magic {magic!r}, version {version}, "
                                f"dtype {dtype})")  # fmt: skip
        found = raw_fingerprint.hex() if any(raw_fingerprint) else ""
        if fingerprint is not None and found != fingerprint:
            raise CorruptStates(f"made by the model with passage fingerprint {found or 'none'}, not {fingerprint}")
        if ratio is not None and stored_ratio != ratio:
            raise CorruptStates(f"holds ratio {stored_ratio}, not {ratio}")
        if states is not None and _FORMATS[dtype] != states:
            raise CorruptStates(f"holds {_FORMATS[dtype]} states, not {states}")
        expected = HEADER_BYTES + 8 * (n + 1) + (4 + _SCALE_BYTES[dtype]) * groups
        expected += _STATE_ITEMSIZE[dtype] * groups * width
        if len(value) != expected:
            raise CorruptStates(f"{len(value)} bytes where the header promises {expected}")
        if verify and zlib.crc32(memoryview(value)[HEADER_BYTES:]) != crc:
            raise CorruptStates("checksum mismatch")
        at = HEADER_BYTES
        offsets = np.frombuffer(value, "<i8", n + 1, at)
        at += 8 * (n + 1)
        counts = np.frombuffer(value, "<i4", groups, at)
        at += 4 * groups
        if dtype == 1:
            states = np.frombuffer(value, "<f2", groups * width, at).reshape(groups, width)
        else:
            scales = np.frombuffer(value, "<f4", groups, at)
            quantized = np.frombuffer(value, np.int8, groups * width, at + 4 * groups).reshape(groups, width)
            states = dequantize_int8(quantized, scales)
        try:
            passages = cls(states, counts, offsets, stored_ratio, (), found)
        except ValueError as err:
            raise CorruptStates(str(err)) from None
        if verify and (int(counts.sum()) != tokens or (counts < 0).any() or (np.diff(offsets) < 0).any()):
            raise CorruptStates("counts or offsets do not add up")
        return passages

    # -- files ------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        np.savez(path, states=self.states, counts=self.counts, offsets=self.offsets, ratio=self.ratio,
                 ids=np.array(self.ids, dtype=str), fingerprint=self.fingerprint)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> PassageStates:
        """A file `save` wrote. Files from before fingerprints load with fingerprint "" (a server refuses them:
        re-encode the documents with `encode_passages`)."""
        with np.load(path) as f:
            fingerprint = str(f["fingerprint"]) if "fingerprint" in f.files else ""
            return cls(f["states"].astype(STATE_DTYPE, copy=False), f["counts"].astype(np.int32, copy=False),
                       f["offsets"].astype(np.int64, copy=False), int(f["ratio"]), tuple(str(i) for i in f["ids"]),
                       fingerprint)  # fmt: skip
