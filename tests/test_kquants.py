"""Q5_0, Q5_1 (minigpt.quant: stored natively) and K-quant decoding (minigpt/convert/kquants.py), checked
three ways:

- against a second, deliberately simple decoder below: per-block, per-element Python loops written
  straight from the ggml block layouts (slow, but each line is one sentence of the spec);
- against gguf-py (llama.cpp's NumPy reference), through committed fixtures made by
  tools/make_kquant_fixtures.py in its own venv (gguf is not a minigpt dependency);
- end to end: a synthetic GGUF in each K-quant type minigpt does not store converts to
  requantize(dequantize(source)); Q4_K and Q6_K are copied byte for byte and run on every backend.
Plus every tensor of the Gemma-3-270M Q4_K_M GGUF (fetched once into the cache) against gguf-py's digests.
"""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from minigpt import quant
from minigpt.convert import convert, kquants
from minigpt.convert.convert import GGUF_TYPES, decode_tensor
from minigpt.convert.gguf import GGUFFile
from minigpt.format import MgptFile

from synthetic import RANDOM_BLOCK_TYPES, random_blocks, tiny_llama

FIX = Path(__file__).parent / "fixtures"
F = np.float32


# --- the simple reference: one block at a time, one element at a time -----------------------------

def f16(b, off):
    return F(struct.unpack_from("<e", b, off)[0])


def ref_q5_0(b):
    d, qh, qs = f16(b, 0), struct.unpack_from("<I", b, 2)[0], b[6:22]
    y = [F(0)] * 32
    for j in range(16):
        lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4)
        hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
        y[j], y[j + 16] = d * F(lo - 16), d * F(hi - 16)
    return y


def ref_q5_1(b):
    d, m, qh, qs = f16(b, 0), f16(b, 2), struct.unpack_from("<I", b, 4)[0], b[8:24]
    y = [F(0)] * 32
    for j in range(16):
        lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4)
        hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
        y[j], y[j + 16] = d * F(lo) + m, d * F(hi) + m
    return y


def ref_q2_k(b):
    scales, qs, d, dmin = b[0:16], b[16:80], f16(b, 80), f16(b, 82)
    y, s = [], 0
    for half in range(2):                      # 128 weights each, 32 bytes of qs
        q = qs[32 * half:32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):              # two sub-blocks of 16 per shift
                dl, ml = d * F(scales[s] & 0x0F), dmin * F(scales[s] >> 4)
                s += 1
                for l in range(16):
                    y.append(dl * F((q[16 * part + l] >> shift) & 3) - ml)
    return y


def ref_q3_k_scales(sc):
    """12 bytes -> 16 signed scales: low 4 bits from bytes 0-7, high 2 bits from bytes 8-11."""
    out = []
    for s in range(16):
        low = (sc[s % 8] >> (0 if s < 8 else 4)) & 0x0F
        high = (sc[8 + s % 4] >> (2 * (s // 4))) & 3
        out.append((low | (high << 4)) - 32)
    return out


def ref_q3_k(b):
    hmask, qs, scales, d = b[0:32], b[32:96], ref_q3_k_scales(b[96:108]), f16(b, 108)
    y, s, bit = [], 0, 0
    for half in range(2):
        q = qs[32 * half:32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):
                dl = d * F(scales[s])
                s += 1
                for l in range(16):
                    i = 16 * part + l
                    low = (q[i] >> shift) & 3
                    y.append(dl * F(low - (0 if hmask[i] & (1 << bit) else 4)))
            bit += 1
    return y


def ref_k4_scale_min(j, sc):
    """Scale and min of sub-block j (0-7) from the 12 packed bytes of Q4_K / Q5_K."""
    if j < 4:
        return sc[j] & 63, sc[j + 4] & 63
    return (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)


def ref_q4_k(b):
    d, dmin, sc, qs = f16(b, 0), f16(b, 2), b[4:16], b[16:144]
    y = []
    for c in range(4):                         # 64 weights per 32 bytes: low nibbles, then high
        q = qs[32 * c:32 * c + 32]
        for nibble in range(2):
            s, m = ref_k4_scale_min(2 * c + nibble, sc)
            dl, ml = d * F(s), dmin * F(m)
            for l in range(32):
                y.append(dl * F((q[l] >> (4 * nibble)) & 0x0F) - ml)
    return y


def ref_q5_k(b):
    d, dmin, sc, qh, qs = f16(b, 0), f16(b, 2), b[4:16], b[16:48], b[48:176]
    y = []
    for c in range(4):
        q = qs[32 * c:32 * c + 32]
        for nibble in range(2):
            k = 2 * c + nibble
            s, m = ref_k4_scale_min(k, sc)
            dl, ml = d * F(s), dmin * F(m)
            for l in range(32):
                v = ((q[l] >> (4 * nibble)) & 0x0F) + (16 if qh[l] & (1 << k) else 0)
                y.append(dl * F(v) - ml)
    return y


def ref_q6_k(b):
    ql, qh, scales, d = b[0:128], b[128:192], np.frombuffer(b[192:208], np.int8), f16(b, 208)
    y = [F(0)] * 256
    for half in range(2):
        L, H, S = ql[64 * half:], qh[32 * half:], scales[8 * half:]
        for l in range(32):
            sub = l // 16
            q1 = ((L[l] & 0x0F) | (((H[l] >> 0) & 3) << 4)) - 32
            q2 = ((L[l + 32] & 0x0F) | (((H[l] >> 2) & 3) << 4)) - 32
            q3 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32
            q4 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32
            base = 128 * half + l
            y[base + 0] = d * F(S[sub + 0]) * F(q1)
            y[base + 32] = d * F(S[sub + 2]) * F(q2)
            y[base + 64] = d * F(S[sub + 4]) * F(q3)
            y[base + 96] = d * F(S[sub + 6]) * F(q4)
    return y


REFERENCE = {"Q5_0": ref_q5_0, "Q5_1": ref_q5_1, "Q2_K": ref_q2_k, "Q3_K": ref_q3_k,
             "Q4_K": ref_q4_k, "Q5_K": ref_q5_k, "Q6_K": ref_q6_k}


def reference(raw, type_name):
    """uint8 [nb, block_bytes] -> float32 [nb, block_size], block by block."""
    return np.array([REFERENCE[type_name](bytes(row)) for row in raw], dtype=np.float32)


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


NATIVE = ["Q5_0", "Q5_1"]          # decoded by minigpt.quant, the types' one dequantizer
TYPES = NATIVE + list(kquants.TYPES)


def decode(raw, type_name):
    """uint8 [nb, block_bytes] -> float32 [nb, block_size] by minigpt's decoder of that GGUF type."""
    if type_name in NATIVE:
        return quant.dequantize(raw, type_name.lower())
    return kquants.dequantize(raw, type_name)


def test_tables_agree():
    assert set(TYPES) == set(REFERENCE) == set(RANDOM_BLOCK_TYPES)
    from minigpt.convert.gguf import GGML_TYPES
    sizes = {name: (block, nbytes) for name, block, nbytes in GGML_TYPES.values()}
    for t in TYPES:
        ours = quant.QTYPES[t.lower()][:2] if t in NATIVE else kquants.TYPES[t]
        assert ours == sizes[t] == RANDOM_BLOCK_TYPES[t][:2]


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("scale", [0.05, 1000.0])
def test_matches_simple_reference(type_name, scale):
    rng = np.random.default_rng(TYPES.index(type_name))
    raw = random_blocks(rng, type_name, 12, scale=scale)
    raw[0, :] = 0                                   # zero scales and codes
    raw[1, :] = 0xFF                                # every bit set; the fp16 fields made finite below
    for off in RANDOM_BLOCK_TYPES[type_name][2]:
        raw[1, off:off + 2] = np.array([0.5], "<f2").view(np.uint8)
    got = decode(raw, type_name)
    assert got.dtype == np.float32 and got.shape == (12, RANDOM_BLOCK_TYPES[type_name][0])
    assert same_bits(got, reference(raw, type_name))


@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_py_fixtures(type_name):
    z = np.load(FIX / "kquants_reference.npz")
    raw, want = z[f"{type_name}/raw"], z[f"{type_name}/values"]
    assert same_bits(decode(raw, type_name), want)
    assert same_bits(reference(raw, type_name), want)   # the simple reference is right too


def test_rows_and_chunks(monkeypatch):
    # a [rows, row_bytes] tensor decodes row by row, and chunking does not change the result
    rng = np.random.default_rng(1)
    raw = random_blocks(rng, "Q4_K", 6 * 3).reshape(6, 3 * 144)
    whole = kquants.dequantize(raw, "Q4_K")
    monkeypatch.setattr(kquants, "_CHUNK_BLOCKS", 4)
    assert whole.shape == (6, 768) and same_bits(kquants.dequantize(raw, "Q4_K"), whole)
    assert same_bits(whole[2], kquants.dequantize(raw[2:3], "Q4_K")[0])


def test_bad_input():
    with pytest.raises(ValueError, match="Q8_K"):
        kquants.dequantize(np.zeros((1, 292), np.uint8), "Q8_K")
    with pytest.raises(ValueError, match="Q6_K"):
        kquants.dequantize(np.zeros((1, 200), np.uint8), "Q6_K")


# --- through `minigpt convert` ---------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["q4_k", "q6_k"])
def test_every_backend_decodes_the_fixture_as_llama_cpp(qtype):
    # minigpt stores these two as they are: its dequantize (NumPy, C, numba) must give llama.cpp's values
    from minigpt.kernels import available_backends, get_backend
    z = np.load(FIX / "kquants_reference.npz")
    raw, want = z[f"{qtype.upper()}/raw"], z[f"{qtype.upper()}/values"]
    assert same_bits(quant.dequantize(raw, qtype), want.reshape(len(raw), -1))
    for name in available_backends():
        assert same_bits(get_backend(name).dequantize(raw, qtype), want.reshape(len(raw), -1)), name


@pytest.mark.parametrize("type_name", [t for t in kquants.TYPES if not GGUF_TYPES[t][1]])   # the decoded ones
def test_convert_requantizes(tmp_path, type_name):
    src, out = tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype=type_name)
    s = convert(src, out)            # no --quant: to the type of its GGUF_TYPES row (Q5_K -> q6_k, Q2_K -> q4_k)
    g, f = GGUFFile(src), MgptFile(out)
    target = GGUF_TYPES[type_name][0]
    assert s["quant"] == target and target in ("q4_k", "q6_k")
    n2d = sum(1 for t in g.tensors.values() if len(t.shape) == 2)
    assert s["requantized_types"] == {f"{type_name.lower()} -> {target}": n2d} and len(s["requantized"]) == n2d
    for gname, name in [("blk.0.ffn_down.weight", "layers.0.w_down"), ("token_embd.weight", "tok_embd")]:
        x = decode_tensor(g.tensors[gname])
        assert same_bits(x, kquants.dequantize(g.tensors[gname].data, type_name))
        assert f.tensors[name].qtype == target
        assert np.array_equal(f.tensor(name), quant.quantize(x, target))
    f.verify()


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K"])
def test_convert_keeps_q4_k_and_q6_k(tmp_path, type_name):
    # no --quant: the tensors are stored byte for byte, as q4_k / q6_k, and the model runs
    import minigpt
    src, out = tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype=type_name)
    s = convert(src, out)
    g, f = GGUFFile(src), MgptFile(out)
    qtype = type_name.lower()
    assert s["requantized"] == [] and s["types"][qtype] == 8
    for gname, name in [("blk.0.ffn_down.weight", "layers.0.w_down"), ("token_embd.weight", "tok_embd")]:
        assert f.tensors[name].qtype == qtype
        assert np.array_equal(f.tensor(name), g.tensors[gname].data)
    f.verify()
    ids = [1, 5, 9, 2]
    want = minigpt.load(out, backend="numpy", precision="exact").logits(ids)
    for backend in ("c", "numba"):
        got = minigpt.load(out, backend=backend, precision="exact").logits(ids)
        assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("target", ["q4_k", "q6_k"])
def test_convert_to_k_quants(tmp_path, target):
    # --quant q4_k / q6_k: ggml's reference quantizers; rows of 96 (not a multiple of 256) go to q8_0
    from minigpt.cli import QUANTS
    from minigpt.convert import QUANT_TYPES
    assert set(QUANTS) == set(QUANT_TYPES)
    src = tmp_path / "s.gguf"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=96, n_layers=1, wtype="F32")
    s = convert(src, tmp_path / "o.mgpt", target)
    f, g = MgptFile(tmp_path / "o.mgpt"), GGUFFile(src)
    assert f.tensors["layers.0.wq"].qtype == target and f.tensors["layers.0.w_down"].qtype == "q8_0"
    head = "q8_0" if target == "q4_k" else target                # kept at 8 bits when the target is 4-bit
    assert f.tensors["tok_embd"].qtype == head
    x = decode_tensor(g.tensors["blk.0.attn_q.weight"])
    assert np.array_equal(f.tensor("layers.0.wq"), quant.quantize(x, target))
    assert s["quant"] == target


def test_convert_to_4_bit_and_summary(tmp_path):
    src, out = tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype="Q4_K")
    s = convert(src, out, "q4_0")
    f, g = MgptFile(out), GGUFFile(src)
    assert f.tensors["tok_embd"].qtype == "q8_0"      # the head kept at 8 bits, as for other sources
    assert s["requantized_types"] == {"q4_k -> q4_0": 7, "q4_k -> q8_0": 1}
    x = decode_tensor(g.tensors["blk.0.attn_q.weight"])
    assert np.array_equal(f.tensor("layers.0.wq"), quant.quantize(x, "q4_0"))


def test_cli_reports_requantized_types(tmp_path):
    from click.testing import CliRunner
    from minigpt.cli import cli
    src = tmp_path / "s.gguf"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype="Q5_K")
    r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "o.mgpt")])
    assert r.exit_code == 0, r.output
    assert "requantized: 8 (q5_k -> q6_k: 8)" in r.output


# --- the real file: Gemma-3-270M Q4_K_M ------------------------------------------------------------

def test_gemma3_every_tensor_matches_gguf_py(gemma3_gguf):
    """Each tensor's decoded float32 bytes against the sha256 gguf-py gives (tools/make_kquant_fixtures.py)."""
    want = json.loads((FIX / "gemma_3_270m_q4_k_m_digests.json").read_text())
    g = GGUFFile(gemma3_gguf)
    assert sorted(g.tensors) == sorted(want["tensors"])
    types = {}
    for name, t in g.tensors.items():
        x = decode_tensor(t)
        assert x.dtype == np.float32 and x.shape == t.shape, name
        assert hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() == want["tensors"][name], name
        types[t.type_name] = types.get(t.type_name, 0) + 1
    assert types == want["types"]


def test_undecodable_type_fails_before_writing(tmp_path):
    src, out = tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype="Q4_K")
    raw = bytearray(src.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = raw.index(name) + len(name) + 4 + 2 * 8          # after n_dims and two dims: the ggml type
    assert struct.unpack_from("<I", raw, at)[0] == 12
    struct.pack_into("<I", raw, at, 15)                   # Q8_K: a size the reader knows, no decoder
    src.write_bytes(bytes(raw))
    from minigpt.errors import ConvertError
    with pytest.raises(ConvertError, match="blk.0.attn_q.weight.*Q8_K"):
        convert(src, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
