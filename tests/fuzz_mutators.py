"""Seeded mutators for the fuzz targets (fuzz_targets.py): JSON documents changed by their structure, and
bytes. Each takes a random.Random, so a case's mutations follow from its seed alone.

mutate_json picks a node by a random walk from a focus (every key of a small object is as likely as
a long list's items) and replaces it with an edge value of any type, a value near it, or another part
of the document; Raw and Dup write what Python's JSON encoder cannot (nesting past the recursion
limit, a 5,000-digit number, a repeated key). mutate_bytes flips, overwrites, cuts, inserts and appends.
"""

import copy
import json
import math
import reprlib


class Raw:
    """JSON text written as is: nesting deeper than Python's JSON encoder goes, a 5,000-digit number."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:12]!r}..., {len(self.text)} chars)"


class Dup:
    """A JSON object written with a repeated key (json.loads keeps the last)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __repr__(self):
        return f"Dup(key {self.pairs[-1][0]!r} twice)"


def dumps(x):
    """JSON text of x (dicts, lists, Raw, Dup; NaN and Infinity as Python's json reads them); strings
    with lone surrogates escaped, so they reach the reader as such."""
    if isinstance(x, (dict, list)):   # the C encoder, for a part without Raw, Dup or lone surrogates
        try:
            text = json.dumps(x, ensure_ascii=False)
            text.encode("utf-8")
            return text
        except (TypeError, UnicodeEncodeError):
            pass
    if isinstance(x, Raw):
        return x.text
    if isinstance(x, (dict, Dup)):
        pairs = x.items() if isinstance(x, dict) else x.pairs
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in pairs) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(map(dumps, x)) + "]"
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(x)
        return json.dumps(x, ensure_ascii=False)
    return json.dumps(x)


def encode(x):
    return dumps(x).encode("utf-8")


INTS = [0, 1, -1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 1023, 1024, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
        2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**31, -2**63, 10**30]
FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-45, 5e-324, 1e-30, 1e30, 3.4e38, 1e308, -1e308, math.nan, math.inf, -math.inf]
STRINGS = ["", " ", "0", "1", "-1", "1e400", "NaN", "null", "true", "llama", "gemma3", "gpt2", "f32", "q4_0",
           "q9_9", "\x00", "\n", "\x1b[31mred", "\ud800", "\U0001f600", "<|im_start|>", "../../etc/passwd",
           "/dev/zero", "%s%s%n", "{{ 7 * 7 }}", "\u202e", "a" * 300]


def interesting(rng, depth=0):
    """A value of a random JSON type, biased to edge cases."""
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(INTS)
    if kind == 1:
        return rng.choice(FLOATS)
    if kind == 2:
        return rng.choice(STRINGS)
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return long_string(rng)
    if kind == 5:
        return rng.choice([Raw("9" * 5000), Raw("1e999"), Raw("-0"), Raw(nested(rng))])
    if kind == 6:
        return []
    if kind == 7:
        return [interesting(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(STRINGS): interesting(rng, depth + 1) for _ in range(rng.randrange(3))}


def long_string(rng):
    n = rng.choice([1000, 70000, 300000])
    return rng.choice(["x", "é", "\U0001f600", "<|im_end|>", "\x00"]) * (n // 4)


def nested(rng):
    n = rng.choice([50, 1000, 100000])
    return "[" * n + "]" * n if rng.random() < 0.5 else '{"a":' * n + "1" + "}" * n


def grow(v, k, most=300_000):
    """v (a str or list) repeated up to k times, and to at most about `most` items."""
    return v * max(1, min(k, most // max(1, len(v))))


def tweak(rng, v):
    """A value near v, of v's own type where one is near."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, -v, 2 * v, v // 2, v * 1000, 0, float(v), str(v), v + 2**32])
    if isinstance(v, float):
        return rng.choice([-v, 2 * v, v / 2, v * 1e30, 0.0, int(v) if math.isfinite(v) else 0, math.nan, math.inf])
    if isinstance(v, str):
        i = rng.randrange(len(v) + 1)
        return rng.choice([v[:i], v[i:], grow(v, 2), v[:i] + rng.choice(STRINGS) + v[i:], v.upper(), grow(v, 1000)])
    if isinstance(v, list):
        v = list(v)
        op = rng.randrange(7)
        if op == 0 and v:
            del v[rng.randrange(len(v))]
        elif op == 1 and v:
            v.insert(rng.randrange(len(v)), v[rng.randrange(len(v))])
        elif op == 2:
            rng.shuffle(v)
        elif op == 3:
            v = v[:rng.randrange(len(v) + 1)]
        elif op == 4:
            v.append(interesting(rng))
        elif op == 5 and v:
            v = grow(v, rng.choice([2, 100, 10000]), 100_000)
        else:
            v = [v]
        return v
    if isinstance(v, dict):
        d = dict(v)
        op = rng.randrange(4)
        if op == 0 and d:
            del d[rng.choice(list(d))]
        elif op == 1:
            d[rng.choice(STRINGS + ["unknown_key"])] = interesting(rng)
        elif op == 2 and d:
            k = rng.choice(list(d))
            return Dup(list(d.items()) + [(k, interesting(rng))])
        else:
            return list(d.values())
        return d
    return interesting(rng)


def pick(rng, root, path=(), stop=0.3):
    """A random path from root down: at each container, stop with probability `stop`, else descend
    into a random child (so every key of a small object is as likely as a long list's items)."""
    node = get(root, path)
    while isinstance(node, (dict, list)) and node and rng.random() > stop:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path, node = path + (key,), node[key]
    return path


def get(root, path):
    for k in path:
        root = root[k]
    return root


def put(root, path, value):
    """root with the node at path replaced (root itself when path is empty)."""
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root


def size(x, most):
    """About how many characters x takes as JSON, counted up to `most` (a value may hold the same
    long list a thousand times: counting stops early)."""
    n, todo = 0, [x]
    while todo and n <= most:
        x = todo.pop()
        if isinstance(x, (dict, Dup)):
            for k, v in (x.items() if isinstance(x, dict) else x.pairs):
                n += len(str(k)) + 4
                todo.append(v)
        elif isinstance(x, (list, tuple)):
            n += len(x) + 2
            todo.extend(x)
        else:
            n += len(x.text) if isinstance(x, Raw) else len(x) + 2 if isinstance(x, str) else 8
    return n


MAX_DOC = 8 << 20    # characters of a mutated document: big enough to hurt a reader, small enough to write


def mutate_json(rng, doc, focus=(), n=None):
    """Apply 1-3 random mutations to doc (a parsed JSON value, changed in place) under the path `focus`
    (when it still leads somewhere); a mutation that would make the document longer than MAX_DOC
    is left out. Returns (doc, [descriptions])."""
    notes = []
    for _ in range(n or rng.choice([1, 1, 1, 2, 3])):
        try:
            base = focus if get(doc, focus) is not None or not focus else ()
        except (KeyError, IndexError, TypeError):   # an earlier mutation took it away
            base = ()
        path = pick(rng, doc, base)
        old = get(doc, path)
        op = rng.random()
        if op < 0.45:
            new = interesting(rng)
        elif op < 0.85:
            new = tweak(rng, old)
        else:   # another part of the document: a value of a plausible shape in the wrong place
            new = copy.deepcopy(get(doc, pick(rng, doc)))
        doc = put(doc, path, new)
        if size(doc, MAX_DOC) > MAX_DOC:
            doc = put(doc, path, old)
            continue
        notes.append(f"{'.'.join(map(str, path)) or '<root>'} = {short(new)}")
    return doc, notes


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 50, 5, 4, 3


def short(v):
    """A short description of a value of any size."""
    n = f" ({len(v)} items)" if isinstance(v, (str, list, dict)) and len(v) > 5 else ""
    return _REPR.repr(v) + n


# --- byte mutation

def mutate_bytes(rng, data, regions=None, n=None):
    """data (bytes) with 1-4 random byte-level changes: flips, edge values, u32/u64 overwrites,
    truncation, insertion, deletion, appended junk. regions: {name: (start, end)} to aim at (default:
    the whole). Returns (bytes, [descriptions])."""
    data, notes = bytearray(data), []
    regions = regions or {"file": (0, len(data))}
    for _ in range(n or rng.choice([1, 1, 2, 4])):
        name = rng.choice(sorted(regions))
        lo, hi = regions[name]
        hi = min(hi, len(data))
        if hi <= lo:
            lo, hi = 0, max(len(data), 1)
        at = rng.randrange(lo, hi)
        op = rng.randrange(8)
        if op == 0 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
            notes.append(f"flip bit in byte {at} ({name})")
        elif op == 1 and at < len(data):
            data[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord('"')])
            notes.append(f"byte {at} = {data[at]} ({name})")
        elif op == 2:
            width = rng.choice([4, 8])
            v = rng.choice([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, rng.randrange(2**width * 8)]) % 2**(8 * width)
            data[at:at + width] = v.to_bytes(width, "little")
            notes.append(f"u{8 * width} at {at} = {v} ({name})")
        elif op == 3:
            del data[at:]
            notes.append(f"truncated at {at} ({name})")
        elif op == 4:
            k = rng.choice([1, 7, 64, 4096])
            data[at:at] = rng.randbytes(k)
            notes.append(f"{k} random bytes inserted at {at} ({name})")
        elif op == 5:
            k = rng.choice([1, 8, 64, 4096])
            del data[at:at + k]
            notes.append(f"{k} bytes deleted at {at} ({name})")
        elif op == 6:
            k = rng.choice([1, 100, 1 << 16])
            data += rng.randbytes(k)
            notes.append(f"{k} bytes appended")
        else:
            k = rng.choice([16, 256, 4096])
            src = rng.randrange(max(len(data), 1))
            data[at:at + k] = data[src:src + k]
            notes.append(f"{k} bytes at {at} copied from {src} ({name})")
    return bytes(data), notes


