# The whole forward pass (Llama, Gemma 3) in one C call (csrc/llama.c); included by _core.pyx.
#
# LlamaForward checks every weight against the config once, when it is built, and keeps a reference to
# each array (the mmap views must outlive the C pointers). forward() checks ids, positions and the
# cache on every call, then runs the C forward with the GIL released.
#
# The matmuls that take quantized activations in the chosen mode (int8, or int16 for balanced's w_down
# and head) get their weights repacked into the x8 layout (csrc/packed.c) when the CPU has x8 kernels:
# a private copy made once, here; the mapped original stays for the rest (embedding rows, 'exact').

import threading

cdef extern from "llama.h" nogil:
    int MG_LLAMA_MAX_GROUP, MG_MATMUL_EXACT, MG_MATMUL_FAST, MG_MATMUL_BALANCED, MG_ACT_SILU, MG_ACT_GELU_TANH

    ctypedef struct mg_llama_config:
        int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size, rope_dim
        float norm_eps, embed_scale, query_scale
        int act, rope_neox

    ctypedef struct mg_weight:
        const void *data
        int qtype

    ctypedef struct mg_llama_layer:
        mg_weight attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down
        mg_weight bq, bk, bv, q_norm, k_norm, post_attn_norm, post_ffn_norm
        int64_t window
        const float *rope_cos
        const float *rope_sin

    ctypedef struct mg_llama_weights:
        mg_weight tok_embd, output_norm, output
        const mg_llama_layer *layers
        int64_t n_rope

    ctypedef struct mg_kv_cache:
        float *const *k
        float *const *v
        const int64_t *cap

    ctypedef struct mg_llama_ctx:
        pass

    mg_llama_ctx *mg_llama_create(const mg_llama_config *cfg, const mg_llama_weights *w, int64_t max_batch)
    void mg_llama_free(mg_llama_ctx *ctx)
    int mg_llama_set_matmul(mg_llama_ctx *ctx, int mode)
    int mg_llama_forward(mg_llama_ctx *ctx, const int64_t *ids, int64_t n, int64_t start, const mg_kv_cache *kv,
                         float *logits_out, int all_logits)

cdef extern from "llama_ops.h" nogil:
    int MG_ATTN_MAX_HEAD_DIM

    ctypedef struct mg_attn_params:
        int64_t n_heads, n_kv_heads, head_dim
        float scale
        int64_t window

    ctypedef struct mg_llama_ops:
        void (*exp)(const float *x, float *y, int64_t n) noexcept nogil

    mg_llama_ops mg_lops
    void mg_attention(const mg_attn_params *ap, const float *q, const float *kc, const float *vc, float *out,
                      int64_t n, int64_t start, int64_t cap)

from libc.stdlib cimport calloc, free, malloc

_ACTS = {"silu": MG_ACT_SILU, "gelu_tanh": MG_ACT_GELU_TANH}
_MATMUL_MODES = {"exact": MG_MATMUL_EXACT, "fast": MG_MATMUL_FAST, "balanced": MG_MATMUL_BALANCED}
_MATMULS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
# the weights each mode multiplies with quantized activations (csrc/llama.h: mg_matmul_mode); None: the
# head. balanced leaves the head plain, so its mg_matmul_q16 takes the float32 path: int16 activations
# there cost 0.6 points of top-1 agreement on SmolLM2, int16 on w_down none.
_PACKED_WEIGHTS = {"exact": (), "fast": (*_MATMULS, None), "balanced": _MATMULS}


cdef cnp.ndarray _check_f32(object a, str what, tuple shape, int writeable=False):
    """a must be a C-contiguous, aligned float32 ndarray of exactly `shape`."""
    if not isinstance(a, cnp.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ValueError(f"{what} must have dtype float32, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{what} has shape {a.shape}, expected {shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{what} is not aligned for float32")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} is read-only")
    return arr


def _is_rope_pair(r):
    return isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(a, np.ndarray) for a in r)


cdef int _positive(object v, str what) except -1:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 < v <= 1 << 24:
        raise ValueError(f"{what} must be an integer in 1..{1 << 24}, got {v!r}")
    return 0


cdef class LlamaForward:
    """The forward pass of minigpt/model/llama.py and gemma3.py as one C call over buffers allocated once.

    weights: {name: (ndarray, qtype name)} with load_weights' names ('tok_embd', 'output_norm',
    'output' unless tied_embeddings, 'layers.{i}.{attn_norm,wq,...,w_down}', with qkv_bias
    'layers.{i}.{bq,bk,bv}', with qk_norm 'layers.{i}.{q_norm,k_norm}', with post_norms
    'layers.{i}.{post_attn_norm,post_ffn_norm}'; others are ignored).
    rope: per layer (cos, sin), float32 [n_rope, rope_dim // 2] (llama.rope_tables), or one pair for
    all. windows: per layer 0 (global) or its sliding window; None: all global. embed_scale,
    query_scale (default 1 / sqrt(head_dim)), act ('silu' or 'gelu_tanh') and rope_neox: see
    csrc/llama.h. max_batch: tokens per C call (longer inputs run in chunks). matmul: 'exact'
    (float32 activations), 'fast' (int8 activations) or 'balanced' (int8, except int16 for w_down and
    float32 for the output head; see csrc/llama.h).
    Not reentrant: concurrent forward() calls on one instance take turns.
    """
    cdef mg_llama_ctx *ctx
    cdef mg_llama_config cfg
    cdef mg_llama_weights _plain            # the checked weights, as given
    cdef mg_llama_layer *_plain_layers      # (n_layers,)
    cdef dict _arrays                       # name -> (array, qtype name) of every matrix
    cdef dict _packed                       # name -> its x8 copy, made on first use
    cdef str _head                          # the output head's name ('output' or 'tok_embd')
    cdef readonly int64_t max_batch, n_rope
    cdef readonly tuple windows              # per layer: 0 or the sliding window
    cdef readonly str matmul
    cdef list _keep          # every array C points into
    cdef object _lock
    cdef uintptr_t *_ranges  # (n_ranges, 2) [begin, end) of each weight array, for overlap checks
    cdef int64_t _n_ranges

    def __cinit__(self):
        self.ctx = NULL
        self._ranges = NULL
        self._plain_layers = NULL

    def __init__(self, *, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size, norm_eps,
                 rope_dim, weights, rope, max_batch=512, tied_embeddings=False, matmul="exact",
                 embed_scale=1.0, query_scale=None, act="silu", rope_neox=False, windows=None,
                 qkv_bias=False, qk_norm=False, post_norms=False):
        for k, v in (("dim", dim), ("n_layers", n_layers), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads),
                     ("head_dim", head_dim), ("hidden_dim", hidden_dim), ("vocab_size", vocab_size),
                     ("rope_dim", rope_dim), ("max_batch", max_batch)):
            _positive(v, k)
        if n_heads % n_kv_heads or n_heads // n_kv_heads > MG_LLAMA_MAX_GROUP:
            raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}, "
                             f"at most {MG_LLAMA_MAX_GROUP} times it")
        if head_dim > MG_ATTN_MAX_HEAD_DIM:
            raise ValueError(f"head_dim {head_dim} is above the supported {MG_ATTN_MAX_HEAD_DIM}")
        if rope_dim % 2 or rope_dim > head_dim:
            raise ValueError(f"rope_dim {rope_dim} must be even and at most head_dim {head_dim}")
        eps = float(norm_eps)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"norm_eps {norm_eps!r} out of range [0, 1)")
        qscale = head_dim ** -0.5 if query_scale is None else float(query_scale)
        if not (0.0 < qscale < 1e6 and 0.0 < float(embed_scale) < 1e6):
            raise ValueError(f"query_scale {query_scale!r} and embed_scale {embed_scale!r} must be positive")
        if act not in _ACTS:
            raise ValueError(f"unknown act {act!r}; expected one of {', '.join(_ACTS)}")
        windows = (0,) * n_layers if windows is None else tuple(windows)
        if len(windows) != n_layers or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                           or not 0 <= v <= 1 << 24 for v in windows):
            raise ValueError(f"windows must be {n_layers} integers in 0..{1 << 24}")
        self.windows = tuple(int(v) for v in windows)
        if self.ctx != NULL:
            raise ValueError("LlamaForward is already initialized")
        cdef mg_llama_config *cfg = &self.cfg
        cdef mg_llama_layer *L
        cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads = dim, n_layers, n_heads, n_kv_heads
        cfg.head_dim, cfg.hidden_dim, cfg.vocab_size, cfg.rope_dim = head_dim, hidden_dim, vocab_size, rope_dim
        cfg.norm_eps, cfg.embed_scale, cfg.query_scale = eps, embed_scale, qscale
        cfg.act, cfg.rope_neox = _ACTS[act], bool(rope_neox)
        self.max_batch = max_batch
        self._keep = []
        self._arrays, self._packed = {}, {}
        self._lock = threading.Lock()

        cdef int64_t qd = n_heads * head_dim, kvd = n_kv_heads * head_dim
        shapes = {"attn_norm": (dim,), "ffn_norm": (dim,), "wq": (qd, dim), "wk": (kvd, dim), "wv": (kvd, dim),
                  "wo": (dim, qd), "w_gate": (hidden_dim, dim), "w_up": (hidden_dim, dim),
                  "w_down": (dim, hidden_dim), "tok_embd": (vocab_size, dim), "output": (vocab_size, dim),
                  "output_norm": (dim,), "bq": (qd,), "bk": (kvd,), "bv": (kvd,), "q_norm": (head_dim,),
                  "k_norm": (head_dim,), "post_attn_norm": (dim,), "post_ffn_norm": (dim,)}

        if not isinstance(weights, dict):
            raise ValueError(f"weights must be a dict name -> (array, qtype), got {type(weights).__name__}")
        cdef mg_llama_weights w
        cdef mg_llama_layer *layers = <mg_llama_layer *>calloc(n_layers, sizeof(mg_llama_layer))
        if layers == NULL:
            raise MemoryError()
        try:
            w.tok_embd = self._weight(weights, "tok_embd", shapes["tok_embd"])
            w.output_norm = self._weight(weights, "output_norm", shapes["output_norm"])
            self._head = "tok_embd" if tied_embeddings else "output"
            w.output = self._weight(weights, self._head, shapes["output"])
            for i in range(n_layers):
                L = &layers[i]
                L.attn_norm = self._weight(weights, f"layers.{i}.attn_norm", shapes["attn_norm"])
                L.wq = self._weight(weights, f"layers.{i}.wq", shapes["wq"])
                L.wk = self._weight(weights, f"layers.{i}.wk", shapes["wk"])
                L.wv = self._weight(weights, f"layers.{i}.wv", shapes["wv"])
                L.wo = self._weight(weights, f"layers.{i}.wo", shapes["wo"])
                L.ffn_norm = self._weight(weights, f"layers.{i}.ffn_norm", shapes["ffn_norm"])
                L.w_gate = self._weight(weights, f"layers.{i}.w_gate", shapes["w_gate"])
                L.w_up = self._weight(weights, f"layers.{i}.w_up", shapes["w_up"])
                L.w_down = self._weight(weights, f"layers.{i}.w_down", shapes["w_down"])
                if qkv_bias:   # the optional weights left out stay {NULL, 0} (calloc)
                    L.bq = self._weight(weights, f"layers.{i}.bq", shapes["bq"])
                    L.bk = self._weight(weights, f"layers.{i}.bk", shapes["bk"])
                    L.bv = self._weight(weights, f"layers.{i}.bv", shapes["bv"])
                if qk_norm:
                    L.q_norm = self._weight(weights, f"layers.{i}.q_norm", shapes["q_norm"])
                    L.k_norm = self._weight(weights, f"layers.{i}.k_norm", shapes["k_norm"])
                if post_norms:
                    L.post_attn_norm = self._weight(weights, f"layers.{i}.post_attn_norm", shapes["post_attn_norm"])
                    L.post_ffn_norm = self._weight(weights, f"layers.{i}.post_ffn_norm", shapes["post_ffn_norm"])
                L.window = self.windows[i]
            ropes = [rope] * n_layers if _is_rope_pair(rope) else rope
            if not isinstance(ropes, (tuple, list)) or len(ropes) != n_layers or not all(map(_is_rope_pair, ropes)):
                raise ValueError("rope must be a pair (cos, sin) of float32 [n_rope, rope_dim // 2] arrays, "
                                 "or a list of such pairs, one per layer")
            n_rope = np.shape(ropes[0][0])[0] if np.ndim(ropes[0][0]) == 2 else 0
            if n_rope < 1:
                raise ValueError(f"rope cos must be 2-D with at least one row, got shape {np.shape(ropes[0][0])}")
            for i in range(n_layers):
                cos = _check_f32(ropes[i][0], "rope cos", (n_rope, rope_dim // 2))
                sin = _check_f32(ropes[i][1], "rope sin", (n_rope, rope_dim // 2))
                self._keep += [cos, sin]
                layers[i].rope_cos = <const float *>cnp.PyArray_DATA(cos)
                layers[i].rope_sin = <const float *>cnp.PyArray_DATA(sin)
            w.n_rope = self.n_rope = n_rope
            w.layers = layers
            free(self._ranges)   # a failed earlier __init__ may have left one
            self._n_ranges = len(self._keep)
            self._ranges = <uintptr_t *>malloc(2 * self._n_ranges * sizeof(uintptr_t))
            if self._ranges == NULL:
                raise MemoryError()
            for i, a in enumerate(self._keep):
                self._ranges[2 * i] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>a)
                self._ranges[2 * i + 1] = self._ranges[2 * i] + <uintptr_t>cnp.PyArray_NBYTES(<cnp.ndarray>a)
        except BaseException:
            free(layers)
            raise
        free(self._plain_layers)   # a failed earlier __init__ may have left one
        self._plain, self._plain_layers = w, layers
        self.set_matmul(matmul)

    cdef mg_weight _weight(self, dict weights, str name, tuple shape) except *:
        """The checked (pointer, qtype) of weights[name], which must have logical `shape`."""
        if name not in weights:
            raise ValueError(f"missing weight {name!r}")
        entry = weights[name]
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise ValueError(f"weights[{name!r}] must be a pair (array, qtype name)")
        data, qtype = entry
        cdef mg_weight out
        if len(shape) == 1:   # norms: f32 vectors
            if qtype != "f32":
                raise ValueError(f"{name} must be f32, not {qtype!r}")
            arr = _check_f32(data, name, shape)
            out.qtype = MG_F32
        else:
            try:
                arr, code, rows, cols = _check_weight(data, qtype)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
            if (rows, cols) != shape:
                raise ValueError(f"{name} has logical shape {(rows, cols)}, expected {shape}")
            out.qtype = code
            self._arrays[name] = (arr, qtype)
        self._keep.append(arr)
        out.data = cnp.PyArray_DATA(<cnp.ndarray>arr)
        return out

    def __dealloc__(self):
        mg_llama_free(self.ctx)
        free(self._ranges)
        free(self._plain_layers)

    cdef mg_weight _packed_weight(self, str name, mg_weight plain) except *:
        """The weight `name` for a quantized-activation matmul: its x8 copy where the CPU has x8 kernels."""
        arr, qtype = self._arrays[name]
        if not x8_supported(qtype) or arr.shape[0] % 8:
            return plain
        if name not in self._packed:
            self._packed[name] = pack_x8(arr, qtype)
        cdef mg_weight out
        out.data = cnp.PyArray_DATA(<cnp.ndarray>self._packed[name])
        out.qtype = plain.qtype | MG_X8
        return out

    def set_matmul(self, mode):
        """'exact' (float32 activations, as llama.py), 'fast' (int8 activations) or 'balanced'."""
        if mode not in _MATMUL_MODES:
            raise ValueError(f"unknown matmul mode {mode!r}; expected one of {', '.join(_MATMUL_MODES)}")
        packed = _PACKED_WEIGHTS[mode]
        cdef int64_t n_layers = self.cfg.n_layers, i
        cdef mg_llama_weights w = self._plain
        cdef mg_llama_layer *layers = <mg_llama_layer *>malloc(n_layers * sizeof(mg_llama_layer))
        cdef mg_weight *slot[7]
        cdef mg_llama_ctx *ctx = NULL
        if layers == NULL:
            raise MemoryError()
        try:
            for i in range(n_layers):
                layers[i] = self._plain_layers[i]
                slot[:] = [&layers[i].wq, &layers[i].wk, &layers[i].wv, &layers[i].wo,
                           &layers[i].w_gate, &layers[i].w_up, &layers[i].w_down]
                for j, nm in enumerate(_MATMULS):
                    if nm in packed:
                        slot[j][0] = self._packed_weight(f"layers.{i}.{nm}", slot[j][0])
            if None in packed:
                w.output = self._packed_weight(self._head, w.output)
            w.layers = layers
            ctx = mg_llama_create(&self.cfg, &w, self.max_batch)   # copies the layer table
            if ctx == NULL:
                raise MemoryError(f"out of memory for LlamaForward scratch (max_batch {self.max_batch})")
            _raise_for(mg_llama_set_matmul(ctx, _MATMUL_MODES[mode]))
        except BaseException:
            mg_llama_free(ctx)
            raise
        finally:
            free(layers)
        with self._lock:
            mg_llama_free(self.ctx)
            self.ctx, self.matmul = ctx, mode

    cdef int _overlaps_weights(self, cnp.ndarray a):
        cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a)
        cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
        cdef int64_t i
        for i in range(self._n_ranges):
            if a0 < self._ranges[2 * i + 1] and self._ranges[2 * i] < a1 and a0 != a1:
                return True
        return False

    def forward(self, ids, start, k_cache, v_cache, all_logits=False, out=None):
        """Run `ids` at positions [start, start + n), writing their K/V into the caches.

        k_cache, v_cache: per layer, float32 [n_kv_heads, cap, head_dim] (a list, or one array
        [n_layers, n_kv_heads, cap, head_dim]). Position t lives in slot t % cap: a global layer needs
        cap >= start + n; a sliding-window layer that or a ring of cap >= window + max_batch - 1.
        start + n <= n_rope. Returns logits float32 [n, vocab] if all_logits else [1, vocab] (the last
        position), in `out` when given. Inputs longer than max_batch run in chunks of max_batch.
        """
        cdef mg_llama_config *cfg = &self.cfg
        ids_in = np.asarray(ids)
        if ids_in.ndim != 1 or ids_in.size == 0:
            raise ValueError(f"ids must be a non-empty 1-D sequence, got shape {ids_in.shape}")
        if not np.issubdtype(ids_in.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {ids_in.dtype}")
        cdef cnp.ndarray idarr = np.ascontiguousarray(ids_in, dtype=np.int64)
        cdef const int64_t *idp = <const int64_t *>cnp.PyArray_DATA(idarr)
        cdef int64_t n = idarr.shape[0], i, vocab = cfg.vocab_size, L = cfg.n_layers
        for i in range(n):
            if idp[i] < 0 or idp[i] >= vocab:
                raise ValueError(f"token id {idp[i]} at position {i} is out of range for vocabulary {vocab}")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if start + n > self.n_rope:
            raise ValueError(f"positions {start}..{start + n} exceed the rope tables' {self.n_rope} positions")
        cdef int64_t rows = n if all_logits else 1
        cdef cnp.ndarray oarr
        if out is None:
            oarr = np.empty((rows, vocab), dtype=np.float32)
        else:
            oarr = _check_f32(out, "out", (rows, vocab), writeable=True)

        # per layer: check the buffers, then gather their pointers and capacities
        ks, vs = self._layer_buffers(k_cache, "k_cache"), self._layer_buffers(v_cache, "v_cache")
        cdef int64_t B = self.max_batch, cap, w
        bufs = ks + vs + [oarr]
        cdef int64_t nb = len(bufs), a, b
        cdef float **kp = <float **>malloc(2 * L * sizeof(float *))
        cdef int64_t *caps = <int64_t *>malloc(L * sizeof(int64_t))
        cdef uintptr_t *rng = <uintptr_t *>malloc(2 * nb * sizeof(uintptr_t))
        cdef mg_kv_cache kv
        cdef int64_t s = start, c0, cn
        cdef float *op = <float *>cnp.PyArray_DATA(oarr)
        cdef float *lp
        cdef int all_l = bool(all_logits), err = 0
        try:
            if kp == NULL or caps == NULL or rng == NULL:
                raise MemoryError()
            for i in range(L):
                cap, w = ks[i].shape[1], self.windows[i]
                if cap < start + n and not (w and cap >= w + min(n, B) - 1):
                    raise ValueError(f"layer {i}: positions {start}..{start + n} do not fit its cache of {cap} slots"
                                     + (f" (window {w}: a ring needs {w + min(n, B) - 1})" if w else ""))
                if vs[i].shape[1] != cap:
                    raise ValueError(f"layer {i}: k_cache has {cap} slots, v_cache {vs[i].shape[1]}")
                kp[i], kp[L + i], caps[i] = <float *>cnp.PyArray_DATA(ks[i]), <float *>cnp.PyArray_DATA(vs[i]), cap
            for a in range(nb):
                rng[2 * a] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>bufs[a])
                rng[2 * a + 1] = rng[2 * a] + <uintptr_t>cnp.PyArray_NBYTES(<cnp.ndarray>bufs[a])
                if self._overlaps_weights(bufs[a]):
                    raise ValueError("the caches and out must not overlap a weight")
                for b in range(a):
                    if rng[2 * a] < rng[2 * b + 1] and rng[2 * b] < rng[2 * a + 1]:
                        raise ValueError("the layers' caches and out must not overlap each other")
            kv.k, kv.v, kv.cap = kp, kp + L, caps
            with self._lock:
                for c0 in range(0, n, B):
                    cn = min(B, n - c0)
                    if all_l:
                        lp = op + c0 * vocab
                    else:
                        lp = op if c0 + cn == n else NULL
                    with nogil:
                        err = mg_llama_forward(self.ctx, idp + c0, cn, s + c0, &kv, lp, all_l)
                    if err:
                        break
        finally:
            free(kp)
            free(caps)
            free(rng)
        _raise_for(err)
        return oarr

    def _layer_buffers(self, cache, str what):
        """[n_layers] checked float32 [n_kv_heads, cap, head_dim] buffers of a cache argument."""
        cdef int64_t L = self.cfg.n_layers
        if isinstance(cache, np.ndarray) and cache.ndim == 4:
            cache = list(cache)
        if not isinstance(cache, (list, tuple)) or len(cache) != L:
            raise ValueError(f"{what} must be a list of {L} arrays [n_kv_heads, cap, head_dim], "
                             f"or one array [n_layers, n_kv_heads, cap, head_dim]")
        out = []
        for i, a in enumerate(cache):
            if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[1] < 1:
                raise ValueError(f"{what}[{i}] must be a 3-D array [n_kv_heads, cap, head_dim]")
            out.append(_check_f32(a, f"{what}[{i}]", (self.cfg.n_kv_heads, a.shape[1], self.cfg.head_dim),
                                  writeable=True))
        return out


# --- test hooks: the C forward's inner steps alone, for tests/test_forward_c.py

def _exp(x):
    """exp of a float32 array through the ISA's exp slot (the one softmax and SwiGLU use)."""
    cdef cnp.ndarray a = np.array(x, dtype=np.float32, order="C", copy=True)
    cdef cnp.ndarray y = np.empty_like(a)
    cdef int64_t n = a.size
    with nogil:
        mg_lops.exp(<const float *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(y), n)
    return y


def _attention(q, k_cache, v_cache, int64_t start, float scale, int64_t window=0):
    """mg_attention: q float32 [n, n_heads, hd]; caches float32 [n_kv, cap, hd], position t in slot t % cap
    -> [n, n_heads * hd]."""
    cdef cnp.ndarray qa = _check_f32(q, "q", np.shape(q))
    if qa.ndim != 3 or np.ndim(k_cache) != 3:
        raise ValueError("q must be [n, n_heads, hd] and the caches [n_kv, cap, hd]")
    cdef int64_t n = qa.shape[0], hd = qa.shape[2], cap = np.shape(k_cache)[1]
    cdef cnp.ndarray ka = _check_f32(k_cache, "k_cache", np.shape(k_cache))
    cdef cnp.ndarray va = _check_f32(v_cache, "v_cache", np.shape(k_cache))
    cdef mg_attn_params ap
    ap.n_heads, ap.n_kv_heads, ap.head_dim, ap.scale, ap.window = qa.shape[1], ka.shape[0], hd, scale, window
    if (n < 1 or ap.n_heads < 1 or ap.n_kv_heads < 1 or ap.n_heads % ap.n_kv_heads or ka.shape[2] != hd
            or not 0 < hd <= MG_ATTN_MAX_HEAD_DIM or start < 0 or window < 0
            or not (start + n <= cap or window and cap >= window + n - 1)):
        raise ValueError(f"bad attention shapes q {np.shape(q)}, cache {np.shape(k_cache)}, start {start}")
    cdef cnp.ndarray out = np.empty((n, ap.n_heads * hd), np.float32)
    with nogil:
        mg_attention(&ap, <const float *>cnp.PyArray_DATA(qa), <const float *>cnp.PyArray_DATA(ka),
                     <const float *>cnp.PyArray_DATA(va), <float *>cnp.PyArray_DATA(out), n, start, cap)
    return out
