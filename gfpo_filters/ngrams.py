"""Words and n-gram hashes shared by the n-gram filters (``diversity``, ``consensus``, ``learned``).

Two ideas, each written once:

* :func:`word_hashes`: every text split into words (lower-cased ``\\w+`` runs, else one non-space
  character: the regular expression :data:`WORD_PATTERN`), each word a 64-bit hash of its UTF-8
  bytes. Vectorised over the whole batch: the texts are joined into one byte
  buffer that numpy classifies and cuts; Python touches only the distinct non-ASCII characters.
* :func:`ngram_hashes`: a seeded 64-bit hash of every window of ``n`` consecutive symbols.

Both are pure functions of their input (no process-dependent hashing), so checkpoints of the
learned scorer stay valid across processes and machines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

#: ``\\w+`` runs, else one non-space character (a punctuation mark). :func:`word_hashes` splits
#: exactly like ``re.findall(WORD_PATTERN, text)``.
WORD_PATTERN = r"\w+|\S"
MASK64 = (1 << 64) - 1
U64 = np.uint64
#: odd multiplier of the polynomial n-gram hash (and of a word's byte length)
P64 = U64(0x9E3779B97F4A7C15)

_SPACE, _WORD, _OTHER = 0, 1, 2
_ASCII_CLASS = np.array(
    [_SPACE if re.fullmatch(r"\s", chr(b)) else _WORD if re.fullmatch(r"\w", chr(b)) else _OTHER for b in range(128)]
    + [_SPACE] * 128,  # bytes of non-ASCII characters are classified per character below
    dtype=np.uint8,
)
#: keep the first k bytes of a little-endian 8-byte word, k = 0 .. 8
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [MASK64], dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic), a bijection of 64-bit words."""
    return _mix64_inplace(x.copy())


def _mix64_inplace(x: np.ndarray) -> np.ndarray:
    """:func:`mix64` overwriting ``x`` (one temporary array instead of five)."""
    t = x >> U64(30)
    x ^= t
    x *= U64(0xBF58476D1CE4E5B9)
    np.right_shift(x, U64(27), out=t)
    x ^= t
    x *= U64(0x94D049BB133111EB)
    np.right_shift(x, U64(31), out=t)
    x ^= t
    return x


def _mix64_int(x: int) -> int:
    """:func:`mix64` of one Python int."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def seed_word(seed: int) -> np.uint64:
    """A 64-bit word derived from ``seed`` (XOR-ed into hashes to pick a hash function)."""
    return mix64(np.array([(int(seed) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & MASK64], dtype=np.uint64))[0]


def ngram_hashes(values: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Seeded hash of every window ``values[i : i + n]``: uint64 array of ``len(values) - n + 1``.

    With ``a = values + 1`` (as uint64, wrapping): ``h = (…(a_i·P + a_{i+1})·P + …)·P + a_{i+n-1}``
    modulo 2⁶⁴ (``P`` = :data:`P64`), then ``mix64(h XOR seed_word(seed))``. Windows are taken over
    the array as given: the caller pads or masks so that no window spans two sequences.
    """
    if values.dtype in (np.int64, np.uint64):  # the same 64 bits, no copy before the addition
        a = values.view(np.uint64) + U64(1)
    else:
        a = values.astype(np.uint64) + U64(1)
    span = max(a.size - n + 1, 0)
    h = a[:span] * P64 if n > 1 else a  # a new array either way: everything after works in place
    for j in range(1, n):
        h += a[j : j + span]
        if j < n - 1:
            h *= P64
    h ^= seed_word(seed)
    return _mix64_inplace(h)


def _classify_non_ascii(buf: np.ndarray, cls: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Set the class of the bytes of every non-ASCII character (UTF-8) in place.

    A character's class (word, space, other) comes from the same regular expressions as for
    ASCII, asked once per distinct character. ``starts`` / ``ends`` flag the first and last
    byte of each "other" character, which is a word of its own.
    """
    lead = np.flatnonzero(buf >= 0xC0)
    if not lead.size:
        return
    b0 = buf[lead].astype(np.int64)
    nbytes = np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2))
    code = b0 & np.where(nbytes == 4, 0x07, np.where(nbytes == 3, 0x0F, 0x1F))
    for k in range(1, 4):
        more = nbytes > k
        code = np.where(more, (code << 6) | (buf[np.minimum(lead + k, buf.size - 1)].astype(np.int64) & 0x3F), code)
    distinct, inverse = np.unique(code, return_inverse=True)
    kind = np.array(
        [
            _SPACE if re.fullmatch(r"\s", c) else _WORD if re.fullmatch(r"\w", c) else _OTHER
            for c in map(chr, distinct.tolist())
        ],
        dtype=np.uint8,
    )[inverse]
    span = lead[:, None] + np.arange(4)[None, :]
    inside = np.arange(4)[None, :] < nbytes[:, None]
    cls[span[inside]] = np.repeat(np.where(kind == _OTHER, _SPACE, kind), nbytes)
    other = kind == _OTHER
    starts[lead[other]] = True
    ends[lead[other] + nbytes[other] - 1] = True


def word_hashes(texts: Sequence[str], lowercase: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All texts' words as one uint64 array of word hashes, and the number of words of each text.

    Words are what ``re.findall(WORD_PATTERN, text.lower())`` returns. A word's hash is a function
    of its UTF-8 bytes alone: cut into 8-byte little-endian chunks ``w_0 … w_{m-1}`` (the last one
    zero-padded), ``h = mix64(w_0)``, then ``h = mix64(h XOR w_k)`` for each further chunk. (No word
    but the NUL character holds a zero byte, so ``w_0`` also fixes the length of a short word.)
    """
    encoded = [(t.lower() if lowercase else t).encode("utf-8", "surrogatepass") for t in texts]
    raw = b"\n".join([*encoded, bytes(8)])  # a separator after each text, then 8 zero bytes for the reads below
    buf = np.frombuffer(raw, dtype=np.uint8)
    text_ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1) - 1
    cls = np.take(_ASCII_CLASS, buf)
    cls[-8:] = _SPACE  # the padding is not a word
    other_start = cls == _OTHER
    other_end = other_start.copy()
    if not raw.isascii():
        _classify_non_ascii(buf, cls, other_start, other_end)
    word = cls == _WORD
    word_start = np.empty_like(word)  # a word character after a non-word one
    word_start[0] = word[0]
    np.greater(word[1:], word[:-1], out=word_start[1:])
    word_start |= other_start
    word_end = np.empty_like(word)  # a word character before a non-word one
    word_end[-1] = word[-1]
    np.greater(word[:-1], word[1:], out=word_end[:-1])
    word_end |= other_end
    starts = np.flatnonzero(word_start)
    ends = np.flatnonzero(word_end) + 1  # every word has one first and one last byte
    n_bytes = ends - starts
    window = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=raw, strides=(1,))
    h = window[starts]
    h &= _BYTE_MASKS[np.minimum(n_bytes, 8)]
    _mix64_inplace(h)
    longer = np.flatnonzero(n_bytes > 8)
    k = 1
    while longer.size > 16:  # words longer than 8 bytes: one more chunk per round
        rest = n_bytes[longer] - 8 * k
        h[longer] = _mix64_inplace(h[longer] ^ (window[starts[longer] + 8 * k] & _BYTE_MASKS[np.minimum(rest, 8)]))
        longer = longer[rest > 8]
        k += 1
    for i in longer.tolist():  # the few longest (a 1,000-digit number): the same chain with Python ints
        x, start = int(h[i]), int(starts[i])
        for j in range(start + 8 * k, int(ends[i]), 8):
            x = _mix64_int(x ^ int.from_bytes(raw[j : min(j + 8, int(ends[i]))], "little"))
        h[i] = x
    counts = np.diff(np.searchsorted(starts, text_ends), prepend=0)
    return h, counts
