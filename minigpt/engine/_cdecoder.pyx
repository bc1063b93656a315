# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The whole forward pass in one C call per chunk (csrc/decoder.c), over the compiled kernels.

CDecoder checks every weight against the config once, when it is built, and keeps a reference to
each array (the mmap views must outlive the C pointers). bind() checks a KV cache's buffers once
and keeps their pointers; forward() then checks only the ids and positions of each call and runs
the C decoder with the GIL released. It computes what minigpt/model/decoder.py computes.

The kernels are those of minigpt.kernels._core, reached through the table it exports
(kernel_table): csrc/decoder.c is built into this module, the kernels into that one.
"""

import threading

import numpy as np

from minigpt import quant
from minigpt.kernels import _core
from minigpt.model import weights as W

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t, uint32_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc

cnp.import_array()

cdef extern from "decoder.h" nogil:
    int MG_OK, MG_ENOMEM, MG_DECODER_MAX_GROUP, MG_ATTN_MAX_HEAD_DIM, MG_ACT_SILU, MG_ACT_GELU_TANH, MG_SCREEN_MAX_TOP
    int MG_KV_F32, MG_KV_F16, MG_KV_Q8_0
    int MG_F32, MG_X8

    ctypedef struct mg_kernel_table:
        pass

    ctypedef struct mg_decoder_config:
        int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size, rope_dim
        float norm_eps, embed_scale, query_scale
        int act, rope_neox

    ctypedef struct mg_weight:
        const void *data
        int qtype, bits

    ctypedef struct mg_decoder_layer:
        mg_weight attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down
        mg_weight bq, bk, bv, q_norm, k_norm, post_attn_norm, post_ffn_norm
        int64_t window
        const float *rope_cos
        const float *rope_sin

    ctypedef struct mg_decoder_weights:
        mg_weight tok_embd, output_norm, output, screen
        const float *output_norms
        const mg_decoder_layer *layers
        int64_t n_rope

    ctypedef struct mg_kv_cache:
        void *const *k
        void *const *v
        const int64_t *cap
        int type

    ctypedef struct mg_decoder:
        pass

    ctypedef struct mg_seq:
        int64_t n, start
        const mg_kv_cache *kv
        int64_t n_logits

    mg_decoder *mg_decoder_create(const mg_kernel_table *kt, const mg_decoder_config *cfg,
                                  const mg_decoder_weights *w, int64_t max_batch)
    void mg_decoder_free(mg_decoder *dec)
    int mg_decoder_forward(mg_decoder *dec, const int64_t *ids, int64_t n, int64_t start, const mg_kv_cache *kv,
                           float *logits_out, int all_logits, int64_t top, const uint32_t *const *allowed)
    int mg_decoder_forward_multi(mg_decoder *dec, const int64_t *ids, int64_t n, const mg_seq *seqs, int64_t n_seqs,
                                 float *logits_out, int64_t top, const uint32_t *const *allowed)

_ACTS = {"silu": MG_ACT_SILU, "gelu_tanh": MG_ACT_GELU_TANH}
_KV_CODES = {"f32": MG_KV_F32, "f16": MG_KV_F16, "q8_0": MG_KV_Q8_0}   # quant.KV_TYPES -> enum mg_kv_type
_CODES = {name: t.code for name, t in quant.QTYPES.items()}

if _core is None:
    raise ImportError("the compiled kernels (minigpt.kernels._core) are not available")
cdef const mg_kernel_table *_kernels = <const mg_kernel_table *>PyCapsule_GetPointer(
    _core.kernel_table, b"minigpt.kernels._core.kernel_table")


cdef cnp.ndarray _check_f32(object a, str what, tuple shape, int writeable=False):
    """a must be a C-contiguous, aligned float32 ndarray of exactly `shape` (the kernels' own check)."""
    return _core.check_array(a, what, np.float32, shape, writeable)


cdef _raise_for(int err):
    if err == MG_ENOMEM:
        raise MemoryError("out of memory for matmul scratch space")
    if err != MG_OK:
        raise RuntimeError(f"kernel error {err}")


cdef class _Bound


cdef int64_t _top(object top) except -1:
    """forward's top -> the C decoder's (0: every logit exact; more than a screen keeps: the same)"""
    if top is None:
        return 0
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be None or a positive integer, got {top!r}")
    return 0 if top > MG_SCREEN_MAX_TOP else top


cdef inline uintptr_t _begin(cnp.ndarray a):
    return <uintptr_t>cnp.PyArray_DATA(a)


cdef inline uintptr_t _end(cnp.ndarray a):
    return <uintptr_t>cnp.PyArray_DATA(a) + <uintptr_t>cnp.PyArray_NBYTES(a)


cdef class CDecoder:
    """The decoder of `cfg` over prepared weights, in C.

    weights: {name: (array, qtype, bits)} with minigpt.model.weights' names, each matrix in the form
    the compiled backend's prepare(data, qtype, bits) gave (x8-packed where bits < 32 and the CPU
    has x8 kernels), norms and biases f32 vectors (bits 32); optionally the head's int8 screen,
    'output_screen' (the head prepared for bits 8) and 'output_norms' (float32 [vocab], _core.row_norms
    of the head), which forward(top=) uses when the head is at bits 32. rope: per layer (cos, sin), float32
    [n_rope, rope_dim // 2]. max_batch: tokens per forward call (the engine's chunk).
    Not reentrant: concurrent forward() calls on one instance take turns.
    """
    cdef mg_decoder *dec
    cdef mg_decoder_config c
    cdef readonly object cfg
    cdef readonly int64_t max_batch, n_rope
    cdef list _keep          # every array C points into
    cdef uintptr_t *_ranges  # (n_ranges, 2) [begin, end) of each of them, for the cache's overlap check
    cdef int64_t _n_ranges
    cdef int64_t *_windows   # (n_layers,) cfg.windows
    cdef object _lock

    def __cinit__(self):
        self.dec = NULL
        self._ranges = NULL
        self._windows = NULL

    def __init__(self, cfg, dict weights, rope, int64_t max_batch):
        if self.dec != NULL:
            raise ValueError("CDecoder is already initialized")
        f = cfg.features
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if cfg.n_heads // cfg.n_kv_heads > MG_DECODER_MAX_GROUP or cfg.head_dim > MG_ATTN_MAX_HEAD_DIM:
            raise ValueError(f"{cfg.n_heads} query heads per {cfg.n_kv_heads} kv heads of {cfg.head_dim} dims "
                             f"are beyond the C decoder's {MG_DECODER_MAX_GROUP} and {MG_ATTN_MAX_HEAD_DIM}")
        cdef mg_decoder_config *c = &self.c
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads = cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads
        c.head_dim, c.hidden_dim, c.vocab_size, c.rope_dim = cfg.head_dim, cfg.hidden_dim, cfg.vocab_size, cfg.rope_dim
        c.norm_eps, c.embed_scale, c.query_scale = cfg.norm_eps, cfg.embed_scale, cfg.query_scale
        c.act, c.rope_neox = _ACTS[f.act], f.rope_neox
        self.cfg, self.max_batch, self._keep, self._lock = cfg, max_batch, [], threading.Lock()
        shapes = W.shapes(cfg)
        if len(rope) != cfg.n_layers:
            raise ValueError(f"rope must hold one (cos, sin) pair per layer, got {len(rope)}")
        self.n_rope = np.shape(rope[0][0])[0]

        cdef mg_decoder_weights w
        cdef mg_decoder_layer *layers = <mg_decoder_layer *>calloc(cfg.n_layers, sizeof(mg_decoder_layer))
        cdef mg_decoder_layer *L
        cdef int64_t i
        if layers == NULL:
            raise MemoryError()
        try:
            w.tok_embd = self._weight(weights, "tok_embd", shapes)
            w.output_norm = self._weight(weights, "output_norm", shapes)
            w.output = self._weight(weights, "output", shapes)
            w.screen.data, w.screen.qtype, w.screen.bits, w.output_norms = NULL, 0, 0, NULL
            if "output_screen" in weights:
                w.screen = self._weight(weights, "output_screen", shapes, shapes["output"])
                if w.screen.bits != 8:
                    raise ValueError("output_screen must be at 8 bits")
                norms = _check_f32(weights.get("output_norms", (None,))[0], "output_norms", (cfg.vocab_size,))
                self._keep.append(norms)
                w.output_norms = <const float *>cnp.PyArray_DATA(norms)
            for i in range(cfg.n_layers):
                L, p = &layers[i], f"layers.{i}."
                L.attn_norm = self._weight(weights, p + "attn_norm", shapes)
                L.wq = self._weight(weights, p + "wq", shapes)
                L.wk = self._weight(weights, p + "wk", shapes)
                L.wv = self._weight(weights, p + "wv", shapes)
                L.wo = self._weight(weights, p + "wo", shapes)
                L.ffn_norm = self._weight(weights, p + "ffn_norm", shapes)
                L.w_gate = self._weight(weights, p + "w_gate", shapes)
                L.w_up = self._weight(weights, p + "w_up", shapes)
                L.w_down = self._weight(weights, p + "w_down", shapes)
                if cfg.qkv_bias:   # the optional weights left out stay {NULL, 0, 0} (calloc)
                    L.bq = self._weight(weights, p + "bq", shapes)
                    L.bk = self._weight(weights, p + "bk", shapes)
                    L.bv = self._weight(weights, p + "bv", shapes)
                if f.qk_norm:
                    L.q_norm = self._weight(weights, p + "q_norm", shapes)
                    L.k_norm = self._weight(weights, p + "k_norm", shapes)
                if f.post_norms:
                    L.post_attn_norm = self._weight(weights, p + "post_attn_norm", shapes)
                    L.post_ffn_norm = self._weight(weights, p + "post_ffn_norm", shapes)
                L.window = cfg.windows[i]
                cos = _check_f32(rope[i][0], "rope cos", (self.n_rope, cfg.rope_dim // 2))
                sin = _check_f32(rope[i][1], "rope sin", (self.n_rope, cfg.rope_dim // 2))
                self._keep += [cos, sin]
                L.rope_cos, L.rope_sin = <const float *>cnp.PyArray_DATA(cos), <const float *>cnp.PyArray_DATA(sin)
            w.layers, w.n_rope = layers, self.n_rope
            self._windows = <int64_t *>malloc(cfg.n_layers * sizeof(int64_t))
            if self._windows == NULL:
                raise MemoryError()
            for i in range(cfg.n_layers):
                self._windows[i] = cfg.windows[i]
            self._ranges = <uintptr_t *>malloc(2 * len(self._keep) * sizeof(uintptr_t))
            if self._ranges == NULL:
                raise MemoryError()
            self._n_ranges = len(self._keep)
            for i, a in enumerate(self._keep):
                self._ranges[2 * i], self._ranges[2 * i + 1] = _begin(a), _end(a)
            self.dec = mg_decoder_create(_kernels, c, &w, max_batch)   # copies the layer table
            if self.dec == NULL:
                raise MemoryError(f"out of memory for the decoder's scratch (max_batch {max_batch})")
        finally:
            free(layers)

    cdef mg_weight _weight(self, dict weights, str name, dict shapes, tuple shape=None) except *:
        """The checked (pointer, qtype, bits) of weights[name], of the logical shape its last part has in
        shapes (or `shape`)."""
        if name not in weights:
            raise ValueError(f"missing weight {name!r}")
        entry = weights[name]
        if not isinstance(entry, tuple) or len(entry) != 3:
            raise ValueError(f"weights[{name!r}] must be (array, qtype name, bits)")
        data, qtype, bits = entry
        shape = shape or shapes[name.rpartition(".")[2]]
        cdef mg_weight out
        if len(shape) == 1:   # norms and biases: f32 vectors
            if qtype != "f32" or bits != 32:
                raise ValueError(f"{name} must be f32 at 32 bits, not {qtype!r} at {bits!r}")
            arr = _check_f32(data, name, shape)
            out.qtype = MG_F32
        else:
            if bits not in (8, 16, 32):
                raise ValueError(f"{name}: bits must be 8, 16 or 32, got {bits!r}")
            packed = isinstance(qtype, str) and qtype.endswith("x8")
            if packed and bits == 32:
                raise ValueError(f"{name}: an x8-packed weight needs quantized activations (bits 8 or 16)")
            try:
                rows_cols = _core.check_weight(data, qtype)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
            if rows_cols != shape:
                raise ValueError(f"{name} has logical shape {rows_cols}, expected {shape}")
            arr = data
            out.qtype = _CODES[qtype[:len(qtype) - 2] if packed else qtype] | (MG_X8 if packed else 0)
        out.bits = bits
        self._keep.append(arr)
        out.data = cnp.PyArray_DATA(<cnp.ndarray>arr)
        return out

    def __dealloc__(self):
        mg_decoder_free(self.dec)
        free(self._ranges)
        free(self._windows)

    def bind(self, k_cache, v_cache):
        """A KV cache for forward(): per layer [n_kv_heads, cap, row] keys and values (lists, or arrays
        [n_layers, ...]), all of one of the cache's row types (quant.kv_type_of: float32 or float16
        rows of head_dim, q8_0 uint8 rows of head_dim + head_dim // 8), checked once: type, shapes,
        writable, no overlap with each other or a weight."""
        return _Bound(self, k_cache, v_cache)

    def forward(self, ids, start, _Bound cache not None, bint all_logits=False, out=None, top=None, allowed=None):
        """Run ids (1 to max_batch of them) at positions [start, start + n), writing their K/V into the
        bound cache. Position t lives in slot t % cap: a global layer needs cap >= start + n; a
        sliding-window layer that or a ring of cap >= window + n - 1. start + n <= n_rope.
        Returns logits float32 [n, vocab] if all_logits else [1, vocab] (the last position), in `out`
        when given. top: None, every logit exact; a count, the head may be screened (csrc/screen.c):
        exact for each row's logits that can be among its `top` largest, below them elsewhere; allowed:
        None, or per row of logits a grammar's bitmask of tokens or None (_core.check_masks), whose
        best are then the top."""
        cdef cnp.ndarray idarr = self._check_run(ids, start, cache)
        cdef int64_t n = idarr.shape[0], s = start, head_top = _top(top)
        cdef cnp.ndarray oarr = self._logits_out(out, n if all_logits else 1, [cache])
        masks, ptrs = _core.check_masks(allowed, oarr.shape[0], self.c.vocab_size)   # ptrs: masks' addresses
        cdef const int64_t *idp = <const int64_t *>cnp.PyArray_DATA(idarr)
        cdef float *op = <float *>cnp.PyArray_DATA(oarr)
        cdef const uint32_t *const *mp = NULL   # the masks, per row (None: every row allowed)
        if ptrs is not None:
            mp = <const uint32_t *const *>cnp.PyArray_DATA(ptrs)
        cdef int err
        with self._lock:
            with nogil:
                err = mg_decoder_forward(self.dec, idp, n, s, &cache.kv, op, all_logits, head_top, mp)
        _raise_for(err)
        return oarr

    def forward_batch(self, seqs, out=None, tails=None, top=None, allowed=None):
        """Run several sequences in one batch: seqs is a list of (ids, start, bound cache), each as forward
        takes them, no two with the same cache, at most max_batch tokens in all. The matmuls take every
        sequence's rows at once (each weight read once for all of them); RoPE, K/V and attention are each
        sequence's own. tails: how many of each sequence's last positions want logits (1..its ids;
        None: 1 each). Returns logits float32 [sum(tails), vocab], each sequence's in turn, in `out`
        when given; top and allowed (per row of logits) as forward takes them."""
        cdef int64_t head_top = _top(top)
        if not isinstance(seqs, (list, tuple)) or not seqs:
            raise ValueError("seqs must be a non-empty list of (ids, start, bound cache)")
        ids, caches, starts = [], [], []
        for k, item in enumerate(seqs):
            if not isinstance(item, tuple) or len(item) != 3:
                raise ValueError(f"seqs[{k}] must be a tuple (ids, start, bound cache)")
            if not isinstance(item[2], _Bound):
                raise TypeError(f"seqs[{k}]: the cache must be bound by CDecoder.bind")
            ids.append(self._check_run(item[0], item[1], item[2]))
            for j, other in enumerate(caches):
                if (<_Bound>item[2]).shares(other):
                    raise ValueError(f"seqs[{j}] and seqs[{k}] share a cache: each sequence needs its own")
            caches.append(item[2])
            starts.append(item[1])
        tails = [1] * len(seqs) if tails is None else list(tails)
        if len(tails) != len(seqs):
            raise ValueError(f"tails must give one count per sequence: {len(tails)} for {len(seqs)}")
        for k, t in enumerate(tails):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= ids[k].shape[0]:
                raise ValueError(f"tails[{k}] must be an integer in 1..{ids[k].shape[0]}, got {t!r}")
        cdef cnp.ndarray idarr = np.concatenate(ids)
        cdef int64_t n = idarr.shape[0], n_seqs = len(seqs), i
        if n > self.max_batch:
            raise ValueError(f"the sequences hold {n} tokens in all, more than max_batch {self.max_batch}")
        cdef cnp.ndarray oarr = self._logits_out(out, sum(tails), caches)
        masks, ptrs = _core.check_masks(allowed, oarr.shape[0], self.c.vocab_size)   # ptrs: masks' addresses
        cdef mg_seq *sq = <mg_seq *>malloc(n_seqs * sizeof(mg_seq))
        if sq == NULL:
            raise MemoryError()
        for i in range(n_seqs):
            sq[i].n, sq[i].start, sq[i].kv = ids[i].shape[0], starts[i], &(<_Bound>caches[i]).kv
            sq[i].n_logits = tails[i]
        cdef const int64_t *idp = <const int64_t *>cnp.PyArray_DATA(idarr)
        cdef float *op = <float *>cnp.PyArray_DATA(oarr)
        cdef const uint32_t *const *mp = NULL   # the masks, per row (None: every row allowed)
        if ptrs is not None:
            mp = <const uint32_t *const *>cnp.PyArray_DATA(ptrs)
        cdef int err
        try:
            with self._lock:
                with nogil:
                    err = mg_decoder_forward_multi(self.dec, idp, n, sq, n_seqs, op, head_top, mp)
        finally:
            free(sq)
        _raise_for(err)
        return oarr

    cdef cnp.ndarray _check_run(self, ids, start, _Bound cache):
        """ids as a contiguous int64 array, once they, start and cache are checked for a forward call."""
        cdef mg_decoder_config *c = &self.c
        if cache.owner is not self:
            raise ValueError("the cache was bound by another decoder")
        ids_in = np.asarray(ids)
        if ids_in.ndim != 1 or ids_in.size == 0 or ids_in.size > self.max_batch:
            raise ValueError(f"ids must be a 1-D sequence of 1..{self.max_batch} tokens, got shape {ids_in.shape}")
        if not np.issubdtype(ids_in.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {ids_in.dtype}")
        cdef cnp.ndarray idarr = np.ascontiguousarray(ids_in, dtype=np.int64)
        cdef const int64_t *idp = <const int64_t *>cnp.PyArray_DATA(idarr)
        cdef int64_t n = idarr.shape[0], i, cap, win, s
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        s = start
        for i in range(n):
            if idp[i] < 0 or idp[i] >= c.vocab_size:
                raise ValueError(f"token id {idp[i]} at position {i} is out of range for vocabulary {c.vocab_size}")
        if s + n > self.n_rope:
            raise ValueError(f"positions {s}..{s + n} are outside the rope tables' 0..{self.n_rope}")
        for i in range(c.n_layers):
            cap, win = cache.caps[i], self._windows[i]
            if cap < s + n and not (win and cap >= win + n - 1):
                raise ValueError(f"layer {i}: positions {s}..{s + n} do not fit its cache of {cap} slots"
                                 + (f" (window {win}: a ring needs {win + n - 1})" if win else ""))
        return idarr

    cdef cnp.ndarray _logits_out(self, out, int64_t rows, list caches):
        """out, checked to take `rows` logits without overlapping a cache or a weight; a new array if None."""
        if out is None:
            return np.empty((rows, self.c.vocab_size), dtype=np.float32)
        cdef cnp.ndarray oarr = _check_f32(out, "out", (rows, self.c.vocab_size), writeable=True)
        if self.overlaps(oarr):
            raise ValueError("out must not overlap the cache or a weight")
        for b in caches:
            if (<_Bound>b).overlaps(oarr):
                raise ValueError("out must not overlap the cache or a weight")
        return oarr

    cdef bint overlaps(self, cnp.ndarray a):
        cdef uintptr_t a0 = _begin(a), a1 = _end(a)
        cdef int64_t i
        for i in range(self._n_ranges):
            if a0 < self._ranges[2 * i + 1] and self._ranges[2 * i] < a1 and a0 != a1:
                return True
        return False


cdef class _Bound:
    """A KV cache checked once for one CDecoder: the C view of its buffers (CDecoder.bind)."""
    cdef readonly CDecoder owner
    cdef list _arrays
    cdef readonly str kv_type
    cdef void **ptrs         # (2 * n_layers,): keys, then values
    cdef int64_t *caps       # (n_layers,)
    cdef uintptr_t lo, hi    # the span [lo, hi) of every buffer
    cdef mg_kv_cache kv

    def __cinit__(self):
        self.ptrs, self.caps = NULL, NULL

    def __init__(self, CDecoder owner, k_cache, v_cache):
        cdef int64_t L = owner.c.n_layers, i, j
        ks, vs = self._buffers(owner, k_cache, "k_cache"), self._buffers(owner, v_cache, "v_cache")
        types = {quant.kv_type_of(a, owner.cfg.head_dim) for a in ks + vs}
        if len(types) != 1:
            raise ValueError(f"the caches mix row types {sorted(types)}: keys and values of every layer "
                             f"must be of one type")
        self.kv_type = types.pop()
        for i in range(L):
            if vs[i].shape[1] != ks[i].shape[1]:
                raise ValueError(f"layer {i}: k_cache has {ks[i].shape[1]} slots, v_cache {vs[i].shape[1]}")
        arrays = ks + vs
        for i in range(2 * L):
            if owner.overlaps(arrays[i]):
                raise ValueError("the caches must not overlap a weight")
            for j in range(i):
                if _begin(arrays[i]) < _end(arrays[j]) and _begin(arrays[j]) < _end(arrays[i]):
                    raise ValueError("the layers' caches must not overlap each other")
        self.ptrs = <void **>malloc(2 * L * sizeof(void *))
        self.caps = <int64_t *>malloc(L * sizeof(int64_t))
        if self.ptrs == NULL or self.caps == NULL:
            raise MemoryError()
        for i in range(2 * L):
            self.ptrs[i] = cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
        for i in range(L):
            self.caps[i] = ks[i].shape[1]
        self.kv.k, self.kv.v, self.kv.cap = self.ptrs, self.ptrs + L, self.caps
        self.kv.type = _KV_CODES[self.kv_type]
        self.owner, self._arrays = owner, arrays
        self.lo, self.hi = min(_begin(a) for a in arrays), max(_end(a) for a in arrays)

    @staticmethod
    def _buffers(CDecoder owner, cache, str what):
        """[n_layers] checked [n_kv_heads, cap, row] buffers of a cache argument, each of one of the row
        types (quant.kv_type_of; whether they agree is the caller's check)."""
        cfg = owner.cfg
        if isinstance(cache, np.ndarray) and cache.ndim == 4:
            cache = list(cache)
        if not isinstance(cache, (list, tuple)) or len(cache) != cfg.n_layers:
            raise ValueError(f"{what} must be a list of {cfg.n_layers} arrays [n_kv_heads, cap, head_dim], "
                             f"or one array [n_layers, n_kv_heads, cap, head_dim]")
        out = []
        for i, a in enumerate(cache):
            if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[1] < 1:
                raise ValueError(f"{what}[{i}] must be a 3-D array [n_kv_heads, cap, head_dim]")
            try:
                dtype, row = quant.kv_row(quant.kv_type_of(a, cfg.head_dim), cfg.head_dim)
            except ValueError as e:
                raise ValueError(f"{what}[{i}]: {e}") from None
            out.append(_core.check_array(a, f"{what}[{i}]", dtype, (cfg.n_kv_heads, a.shape[1], row), True))
        return out

    def __dealloc__(self):
        free(self.ptrs)
        free(self.caps)

    cdef bint overlaps(self, cnp.ndarray a):
        cdef uintptr_t a0 = _begin(a), a1 = _end(a)
        for b in self._arrays:
            if a0 < _end(b) and _begin(b) < a1:
                return True
        return False

    cdef bint shares(self, _Bound other):
        """Whether any buffer of other overlaps one of these (two bindings of one cache, say)."""
        if other is self:
            return True
        if not (self.lo < other.hi and other.lo < self.hi):   # the usual case: apart, a check of two spans
            return False
        for b in other._arrays:
            if self.overlaps(b):
                return True
        return False
