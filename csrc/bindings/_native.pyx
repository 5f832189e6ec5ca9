# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""vqrt._native: the compiled core (csrc/) for Python.

A thin layer: arrays come in as typed memoryviews (no numpy C headers), output arrays are
allocated by the caller (vqrt.runtime), the GIL is released around the C++ call, and vqrt::Error
becomes ValueError. Argument checking beyond shapes lives in C++, so Python and C callers get the
same messages. One section per op; add new ops the same way.
"""
from cython.operator cimport dereference as deref
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libcpp cimport bool as cbool
from libcpp.map cimport map
from libcpp.optional cimport optional
from libcpp.string cimport string

cimport vqrt_core as core


# ---------------------------------------------------------------------------------------------
# Build and machine

def cpu_isa():
    """The instruction set the CPU kernels use: 'generic', 'avx2' or 'avx512'.

    The best the CPU supports, capped by the environment variable VQRT_CPU_ISA (read once).
    Raises ValueError if VQRT_CPU_ISA is set to anything else.
    """
    return core.cpu_isa_name(core.cpu_isa_active()).decode()


def built_with_cuda():
    """True when the extension was built with the CUDA kernels."""
    return core.vqrt_built_with_cuda() != 0


def cuda_device_count():
    """Number of usable CUDA devices (0 without a CUDA build, a driver or a GPU)."""
    return core.vqrt_cuda_device_count()


# ---------------------------------------------------------------------------------------------
# Random numbers (Philox4x32-10, csrc/philox.h)

def philox4x32_10(counter, key):
    """One Philox4x32-10 block: counter 4 x uint32, key 2 x uint32 -> tuple of 4 uint32."""
    if len(counter) != 4 or len(key) != 2:
        raise ValueError(f"counter must have 4 words and key 2, got {len(counter)} and {len(key)}")
    cdef core.Philox4x32 ctr
    cdef int i
    for i in range(4):
        ctr.v[i] = <uint32_t>counter[i]
    cdef core.Philox4x32 r = core.philox4x32_10(ctr, <uint32_t>key[0], <uint32_t>key[1])
    return (r.v[0], r.v[1], r.v[2], r.v[3])


def philox_uniform(uint64_t seed, uint64_t step, uint64_t stream=0):
    """The sampler's uniform in [0, 1) (53 bits) for (seed, step, stream)."""
    return core.philox_uniform(seed, step, stream)


# ---------------------------------------------------------------------------------------------
# Sampling (csrc/sampling.h)

cdef core.SamplingParams _sampling_params(int64_t top_k, float top_p, float temperature,
                                          bint greedy, int num_threads):
    cdef core.SamplingParams p
    p.top_k = top_k
    p.top_p = top_p
    p.temperature = temperature
    p.greedy = greedy
    p.num_threads = num_threads
    return p


cdef const float* _logits_ptr(const float[:, ::1] logits):
    # An empty array has no element 0; C++ reports the zero batch or vocab.
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return NULL
    return &logits[0, 0]


def sample_logits(const float[:, ::1] logits, const uint64_t[::1] seeds, uint64_t step,
                  int64_t top_k, float top_p, float temperature, bint greedy, int num_threads,
                  int64_t[::1] out):
    """Draws one token per row into out. logits [B, V] float32, seeds [B] uint64, out [B] int64.

    Use vqrt.runtime.sampling.sample_logits, which allocates out and documents the rules.
    """
    cdef int64_t batch = logits.shape[0], vocab = logits.shape[1]
    if seeds.shape[0] != batch or out.shape[0] != batch:
        raise ValueError(f"seeds and out must have B={batch} entries, got {seeds.shape[0]} "
                         f"and {out.shape[0]}")
    cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, num_threads)
    cdef const float* x = _logits_ptr(logits)
    cdef const uint64_t* s = &seeds[0] if batch > 0 else NULL
    cdef int64_t* o = &out[0] if batch > 0 else NULL
    with nogil:
        core.sample_logits(x, batch, vocab, s, step, p, o)


def sampling_probs(const float[:, ::1] logits, int64_t top_k, float top_p, float temperature,
                   bint greedy, double[:, ::1] probs):
    """The distribution sample_logits draws from, into probs [B, V] float64."""
    cdef int64_t batch = logits.shape[0], vocab = logits.shape[1]
    if probs.shape[0] != batch or probs.shape[1] != vocab:
        raise ValueError(f"probs must have shape ({batch}, {vocab}), got "
                         f"({probs.shape[0]}, {probs.shape[1]})")
    cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
    cdef const float* x = _logits_ptr(logits)
    cdef double* o = &probs[0, 0] if batch > 0 and vocab > 0 else NULL
    with nogil:
        core.sampling_probs(x, batch, vocab, p, o)


# ---------------------------------------------------------------------------------------------
# The CPU transformer decoder (csrc/transformer.h)

# safetensors dtype name -> (C++ dtype, the numpy dtype the array must have)
_WEIGHT_DTYPES = {
    "F32": (core.DType.f32, "float32"),
    "F16": (core.DType.f16, "float16"),
    "BF16": (core.DType.bf16, "uint16"),  # bit patterns: numpy has no bfloat16
    "I8": (core.DType.i8, "int8"),
}


cdef _check_call(int64_t batch, int64_t length, float[:, ::1] logits, int64_t vocab):
    """A prefill's (length >= 1) or a step's (length -1) tokens and logits [batch, vocab]."""
    if logits.shape[0] != batch or logits.shape[1] != vocab:
        raise ValueError(f"logits must have shape ({batch}, {vocab}), got "
                         f"({logits.shape[0]}, {logits.shape[1]})")
    if length < 0 and batch == 0:
        raise ValueError("tokens must be non-empty [B]")
    if length >= 0 and (batch == 0 or length == 0):
        raise ValueError(f"tokens must be non-empty [B, T], got ({batch}, {length})")


cdef map[string, core.TensorView] _tensor_views(dict tensors, dict dtypes) except *:
    """name -> numpy array, name -> dtype tag -> the C++ views (borrowed: keep the arrays)."""
    cdef map[string, core.TensorView] views
    cdef core.TensorView view
    cdef size_t address
    for name, array in tensors.items():
        tag = dtypes.get(name, "F32")
        if tag not in _WEIGHT_DTYPES:
            raise ValueError(f"tensor {name}: dtype {tag} is not one of "
                             f"{', '.join(_WEIGHT_DTYPES)}")
        dtype, numpy_dtype = _WEIGHT_DTYPES[tag]
        if array.dtype.name != numpy_dtype:
            raise ValueError(f"tensor {name} is tagged {tag} and must be a {numpy_dtype} "
                             f"array, got {array.dtype.name}")
        if not array.flags.c_contiguous:
            raise ValueError(f"tensor {name} must be C-contiguous")
        address = array.__array_interface__["data"][0]
        view.dtype = dtype
        view.data = <const void*>address
        view.shape = [int(d) for d in array.shape]
        views[name.encode()] = view
    return views


cdef class NativeTransformer:
    """The KV-cached GPT decoder on the CPU, over borrowed weight arrays.

    config: dict with n_layer, n_head, n_embd, vocab_size, block_size.
    tensors: name -> C-contiguous numpy array ("vqrt-native-1" names and shapes); the arrays are
        kept referenced here and read in place, never copied.
    dtypes: name -> "F32", "F16", "BF16" (uint16 bit patterns) or "I8"; names not listed are F32.
    max_batch, max_len (0 = block_size), num_threads (0 = one per core), bf16_activations,
        kv_f16: as TransformerConfig in csrc/transformer.h.

    Use vqrt.runtime.native_decoder.NativeDecoder, which allocates the outputs. C++ checks every
    tensor's presence, shape and dtype and raises ValueError naming it.
    """
    cdef core.Transformer* _model
    cdef dict _tensors

    def __cinit__(self, dict config, dict tensors, dict dtypes, int64_t max_batch=1,
                  int64_t max_len=0, int num_threads=0, bint bf16_activations=False,
                  kv_f16=None):
        cdef core.TransformerConfig c
        c.n_layer = config["n_layer"]
        c.n_head = config["n_head"]
        c.n_embd = config["n_embd"]
        c.vocab_size = config["vocab_size"]
        c.block_size = config["block_size"]
        c.max_batch = max_batch
        c.max_len = max_len
        c.num_threads = num_threads
        c.bf16_activations = bf16_activations
        if kv_f16 is not None:  # else the C++ default: by the weights' dtypes
            # Of a C++ bool: an optional<int> would become optional<bool> through its operator
            # bool (has_value), so False would read as True.
            c.kv_f16 = optional[cbool](<cbool>kv_f16)
        self._model = new core.Transformer(c, _tensor_views(tensors, dtypes))
        self._tensors = dict(tensors)

    def __dealloc__(self):
        del self._model

    def prefill(self, const int64_t[:, ::1] tokens, float[:, ::1] logits):
        """tokens int64 [B, T] at positions 0..T-1 -> logits float32 [B, V] of position T-1."""
        cdef int64_t batch = tokens.shape[0], length = tokens.shape[1]
        _check_call(batch, length, logits, self._model.config().vocab_size)
        with nogil:
            self._model.prefill(&tokens[0, 0], batch, length, &logits[0, 0])

    def step(self, const int64_t[::1] tokens, int64_t pos, float[:, ::1] logits):
        """tokens int64 [B] at position pos -> logits float32 [B, V]."""
        cdef int64_t batch = tokens.shape[0]
        _check_call(batch, -1, logits, self._model.config().vocab_size)
        with nogil:
            self._model.step(&tokens[0], batch, pos, &logits[0, 0])

    def rewind(self, int64_t length):
        """Keeps cached positions [0, length)."""
        self._model.rewind(length)

    @property
    def length(self):
        """Cached positions."""
        return self._model.length()

    @property
    def isa(self):
        """The instruction set of the kernels in use."""
        return core.cpu_isa_name(self._model.isa()).decode()

    @property
    def num_threads(self):
        return self._model.num_threads()

    @property
    def kv_f16(self):
        """Whether the KV cache is fp16."""
        return self._model.config().kv_f16.value()

    @property
    def max_batch(self):
        return self._model.config().max_batch

    @property
    def max_len(self):
        return self._model.config().max_len


# ---------------------------------------------------------------------------------------------
# The GPU transformer decoder (csrc/gpu_transformer.h)

def gpu_unavailable_reason():
    """"" when the GPU decoder can run here, else why not (one line, with the fix)."""
    return core.gpu_unavailable_reason().decode()


cdef class GpuWeights:
    """The model's weights uploaded to the current CUDA device (fp16 matrices), read-only and
    shared by any number of GpuTransformer. Arguments as NativeTransformer's; sample_vocab: the
    head rows computed (0 = all). The arrays are read once and may be freed afterwards."""
    cdef core.shared_ptr[const core.GpuWeights] _weights

    def __cinit__(self, dict config, dict tensors, dict dtypes, int64_t sample_vocab=0):
        cdef core.GpuModelConfig c
        c.n_layer = config["n_layer"]
        c.n_head = config["n_head"]
        c.n_embd = config["n_embd"]
        c.vocab_size = config["vocab_size"]
        c.block_size = config["block_size"]
        c.sample_vocab = sample_vocab
        cdef map[string, core.TensorView] views = _tensor_views(tensors, dtypes)
        with nogil:
            self._weights = core.upload_gpu_weights(c, views)

    @property
    def matrix_bytes(self):
        """Bytes of the fp16 weight matrices one decode step reads."""
        return core.gpu_weight_matrix_bytes(deref(self._weights.get()))

    @property
    def sample_vocab(self):
        """Logits per row: the first sample_vocab rows of the head."""
        return core.gpu_weights_config(deref(self._weights.get())).sample_vocab


cdef class GpuTransformer:
    """A KV cache of max_batch x max_len (0 = block size) on the GPU over shared GpuWeights; one
    per thread. Use vqrt.runtime.cuda_decoder.CudaDecoder, which allocates the outputs."""
    cdef core.GpuTransformer* _model
    cdef GpuWeights _weights
    cdef int64_t _sample_vocab

    def __cinit__(self, GpuWeights weights not None, int64_t max_batch=1, int64_t max_len=0,
                  bint use_graph=True):
        cdef core.GpuDecoderOptions o
        o.max_batch = max_batch
        o.max_len = max_len
        o.use_graph = use_graph
        self._model = new core.GpuTransformer(weights._weights, o)
        self._weights = weights
        self._sample_vocab = weights.sample_vocab

    def __dealloc__(self):
        del self._model

    def prefill(self, const int64_t[:, ::1] tokens, float[:, ::1] logits=None):
        """tokens int64 [B, T] at positions 0..T-1 -> logits float32 [B, sample_vocab], or
        None: they stay on the device for sample()."""
        cdef int64_t batch = tokens.shape[0], length = tokens.shape[1]
        cdef float* out = NULL
        if logits is not None:
            _check_call(batch, length, logits, self._sample_vocab)
            out = &logits[0, 0]
        elif batch == 0 or length == 0:
            raise ValueError(f"tokens must be non-empty [B, T], got ({batch}, {length})")
        with nogil:
            self._model.prefill(&tokens[0, 0], batch, length, out)

    def step(self, const int64_t[::1] tokens, int64_t pos, float[:, ::1] logits=None):
        """tokens int64 [B] at position pos -> logits float32 [B, sample_vocab], or None: they
        stay on the device for sample()."""
        cdef int64_t batch = tokens.shape[0]
        cdef float* out = NULL
        if logits is not None:
            _check_call(batch, -1, logits, self._sample_vocab)
            out = &logits[0, 0]
        elif batch == 0:
            raise ValueError("tokens must be non-empty [B]")
        with nogil:
            self._model.step(&tokens[0], batch, pos, out)

    def sample(self, const uint64_t[::1] seeds, uint64_t step, int64_t top_k, float top_p,
               float temperature, bint greedy, int64_t[::1] out):
        """seeds uint64 [B] -> out int64 [B]: one token per row from the last prefill's or
        step's logits, drawn on the GPU (Philox counter `step`)."""
        if seeds.shape[0] == 0 or seeds.shape[0] != out.shape[0]:
            raise ValueError(f"seeds and out must be [B] alike and non-empty, got "
                             f"{seeds.shape[0]} and {out.shape[0]}")
        if self._model.batch() == 0:
            raise ValueError("sample before prefill: run prefill first")
        if seeds.shape[0] != self._model.batch():
            raise ValueError(f"seeds must be [{self._model.batch()}] (the prefill's batch), got "
                             f"{seeds.shape[0]}")
        cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
        with nogil:
            self._model.sample(&seeds[0], step, p, &out[0])

    def generate(self, const int64_t[:, ::1] prefix, const uint64_t[::1] seeds, int64_t top_k,
                 float top_p, float temperature, bint greedy, int64_t[:, ::1] out):
        """prefix int64 [B, P], seeds uint64 [B] -> out int64 [B, steps], sampled on the GPU."""
        cdef int64_t batch = prefix.shape[0], length = prefix.shape[1], steps = out.shape[1]
        if batch == 0 or length == 0 or steps == 0:
            raise ValueError(f"prefix [B, P] and out [B, steps] must be non-empty")
        if seeds.shape[0] != batch or out.shape[0] != batch:
            raise ValueError(f"seeds and out need {batch} rows, got {seeds.shape[0]} and "
                             f"{out.shape[0]}")
        cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
        with nogil:
            self._model.generate(&prefix[0, 0], batch, length, steps, &seeds[0], p, &out[0, 0])

    @property
    def length(self):
        """Cached positions."""
        return self._model.length()

    @property
    def max_batch(self):
        return self._model.options().max_batch

    @property
    def max_len(self):
        return self._model.options().max_len


# ---------------------------------------------------------------------------------------------
# A CUDA stream and its device memory (csrc/device_stream.h), for engines we did not compile

cdef class DeviceStream:
    """A CUDA stream on the current device and the device memory it owns; addresses are ints
    (what TensorRT's set_tensor_address takes), checked against this stream's allocations.
    Host buffers are C-contiguous uint8 views. Use vqrt.runtime.tensorrt_backend."""
    cdef core.DeviceStream* _stream

    def __cinit__(self):
        self._stream = new core.DeviceStream()

    def __dealloc__(self):
        del self._stream

    @property
    def handle(self):
        """The cudaStream_t as an int."""
        return self._stream.handle()

    def allocate(self, size_t nbytes):
        """nbytes of zeroed device memory, freed with the stream -> its address."""
        return self._stream.allocate(nbytes)

    def release(self, uintptr_t address):
        """Frees an allocation once everything enqueued has run (never on a stream that
        captured graphs)."""
        with nogil:
            self._stream.release(address)

    def upload(self, uintptr_t device, const unsigned char[::1] host):
        """Enqueues a copy of host to device."""
        cdef size_t n = host.shape[0]
        cdef const void* src = &host[0] if n else NULL
        with nogil:
            self._stream.upload(device, src, n)

    def download(self, unsigned char[::1] host, uintptr_t device):
        """Copies device to host once everything enqueued before has run."""
        cdef size_t n = host.shape[0]
        cdef void* dst = &host[0] if n else NULL
        with nogil:
            self._stream.download(dst, device, n)

    def fill_zero(self, uintptr_t device, size_t nbytes):
        self._stream.fill_zero(device, nbytes)

    def copy_rows(self, uintptr_t dst, size_t dst_pitch, uintptr_t src,
                  size_t src_pitch, size_t width, size_t rows):
        """rows x width bytes, device to device, each row at its pitch (bytes)."""
        self._stream.copy_rows(dst, dst_pitch, src, src_pitch, width, rows)

    def add_int64(self, uintptr_t value, int64_t delta):
        """Enqueues *value += delta for one int64 on the device."""
        self._stream.add_int64(value, delta)

    def begin_capture(self):
        self._stream.begin_capture()

    def end_capture(self):
        """-> the index of the graph captured since begin_capture()."""
        return self._stream.end_capture()

    def replay(self, int64_t graph):
        self._stream.replay(graph)

    def sample(self, uintptr_t logits, int64_t batch, int64_t vocab, uintptr_t seeds,
               uint64_t step, int64_t top_k, float top_p, float temperature, bint greedy,
               uintptr_t tokens, uintptr_t status):
        """Enqueues the GPU sampler: logits [batch, vocab] float32, seeds [batch] uint64 ->
        tokens [batch] int64, status [batch] int32 (all device addresses)."""
        cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
        self._stream.sample(logits, batch, vocab, seeds, step, p, tokens, status)

    def check_sampled(self, uintptr_t status, int64_t batch, int64_t top_k, float top_p,
                      float temperature, bint greedy):
        """Waits; ValueError with the CPU sampler's message for the lowest bad row of status
        (device, int32 [batch], as sample() wrote it)."""
        cdef core.SamplingParams p = _sampling_params(top_k, top_p, temperature, greedy, 0)
        with nogil:
            self._stream.check_sampled(status, batch, p)


# ---------------------------------------------------------------------------------------------
# Sliding-window sampling plan (csrc/sliding_window.h)

cdef class SlidingWindow:
    """The window of every token of a grid_h x grid_w grid sampled through a window_h x window_w
    window (clamped to the grid), in runs of `stride` tokens along a row.

    place(index) -> (origin_row, origin_col, local_index, run_end); gather copies a window's
    first cells. Use vqrt.runtime.decoding, which assembles the sequences the backends run.
    """
    cdef core.SlidingWindow* _plan

    def __cinit__(self, int64_t grid_h, int64_t grid_w, int64_t window_h, int64_t window_w,
                  int64_t stride):
        self._plan = new core.SlidingWindow(grid_h, grid_w, window_h, window_w, stride)

    def __dealloc__(self):
        del self._plan

    def place(self, int64_t index):
        """Token `index` (raster) -> (origin_row, origin_col, local_index, run_end)."""
        cdef core.WindowPlacement p = self._plan.place(index)
        return (p.origin_row, p.origin_col, p.local_index, p.run_end)

    def gather(self, const int64_t[:, ::1] grid, int64_t index, int64_t length,
               int64_t[:, ::1] out):
        """The first `length` cells of the window of token `index`, raster order:
        grid int64 [B, grid_h * grid_w] -> out int64 [B, length]."""
        cdef int64_t batch = grid.shape[0]
        if grid.shape[1] != self._plan.grid_h() * self._plan.grid_w():
            raise ValueError(f"grid must be [B, {self._plan.grid_h() * self._plan.grid_w()}], "
                             f"got [{batch}, {grid.shape[1]}]")
        if out.shape[0] != batch or out.shape[1] != length:
            raise ValueError(f"out must be [{batch}, {length}], got [{out.shape[0]}, "
                             f"{out.shape[1]}]")
        if batch == 0 or length == 0:
            self._plan.place(index)  # still checks the index
            return
        with nogil:
            self._plan.gather(&grid[0, 0], batch, index, length, &out[0, 0])

    @property
    def grid(self):
        """(grid_h, grid_w)."""
        return (self._plan.grid_h(), self._plan.grid_w())

    @property
    def window(self):
        """(window_h, window_w) as used: the requested window clamped to the grid."""
        return (self._plan.window_h(), self._plan.window_w())

    @property
    def window_size(self):
        return self._plan.window_size()

    @property
    def stride(self):
        return self._plan.stride()
