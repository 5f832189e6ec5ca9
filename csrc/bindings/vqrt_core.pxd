# Declarations of the C++ core (csrc/) for csrc/bindings/_native.pyx, one block per header.
# Functions that throw vqrt::Error (a std::invalid_argument) are declared `except +`, which turns
# it into ValueError.
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libcpp cimport bool
from libcpp.map cimport map
from libcpp.optional cimport optional
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "cpu_features.h" namespace "vqrt" nogil:
    cdef enum class CpuIsa:
        generic
        avx2
        avx512

    CpuIsa cpu_isa_active() except +
    const char* cpu_isa_name(CpuIsa isa)


cdef extern from "philox.h" namespace "vqrt" nogil:
    cdef struct Philox4x32:
        uint32_t v[4]

    Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1)
    double philox_uniform(uint64_t seed, uint64_t step, uint64_t stream)


cdef extern from "sampling.h" namespace "vqrt" nogil:
    cdef cppclass SamplingParams:
        int64_t top_k
        float top_p
        float temperature
        bool greedy
        int num_threads

    # logits [batch, vocab] float32, seeds [batch], out [batch]
    void sample_logits(const float* logits, int64_t batch, int64_t vocab, const uint64_t* seeds,
                       uint64_t step, const SamplingParams& params, int64_t* out) except +
    # logits [batch, vocab] float32, probs [batch, vocab] float64
    void sampling_probs(const float* logits, int64_t batch, int64_t vocab,
                        const SamplingParams& params, double* probs) except +


cdef extern from "vqrt.h" nogil:
    int vqrt_built_with_cuda()
    int vqrt_cuda_device_count()


cdef extern from "linear.h" namespace "vqrt" nogil:
    cdef enum class DType:
        f32
        f16
        bf16
        i8


cdef extern from "transformer.h" namespace "vqrt" nogil:
    cdef cppclass TransformerConfig:
        int64_t n_layer
        int64_t n_head
        int64_t n_embd
        int64_t vocab_size
        int64_t block_size
        int64_t max_batch
        int64_t max_len
        int num_threads
        bool bf16_activations
        optional[bool] kv_f16

    cdef cppclass TensorView:
        DType dtype
        const void* data
        vector[int64_t] shape

    cdef cppclass Transformer:
        Transformer(const TransformerConfig& config,
                    const map[string, TensorView]& tensors) except +
        # tokens [batch, length] -> logits [batch, vocab] of the last position
        void prefill(const int64_t* tokens, int64_t batch, int64_t length, float* logits) except +
        # tokens [batch] at position pos -> logits [batch, vocab]
        void step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits) except +
        void rewind(int64_t length) except +
        int64_t length()
        int64_t batch()
        const TransformerConfig& config()
        CpuIsa isa()
        int num_threads()


cdef extern from "sliding_window.h" namespace "vqrt" nogil:
    cdef cppclass WindowPlacement:
        int64_t origin_row
        int64_t origin_col
        int64_t local_index
        int64_t run_end

    cdef cppclass SlidingWindow:
        SlidingWindow(int64_t grid_h, int64_t grid_w, int64_t window_h, int64_t window_w,
                      int64_t stride) except +
        WindowPlacement place(int64_t index) except +
        # grid [batch, grid_h * grid_w] -> out [batch, length]
        void gather(const int64_t* grid, int64_t batch, int64_t index, int64_t length,
                    int64_t* out) except +
        int64_t grid_h()
        int64_t grid_w()
        int64_t window_h()
        int64_t window_w()
        int64_t window_size()
        int64_t stride()


cdef extern from "<memory>" namespace "std" nogil:
    cdef cppclass shared_ptr[T]:
        T* get()
        bint operator bool()


cdef extern from "device_stream.h" namespace "vqrt" nogil:
    cdef cppclass DeviceStream:
        DeviceStream() except +
        uintptr_t handle()
        uintptr_t allocate(size_t bytes) except +
        void release(uintptr_t address) except +
        void upload(uintptr_t device, const void* host, size_t bytes) except +
        void download(void* host, uintptr_t device, size_t bytes) except +
        void fill_zero(uintptr_t device, size_t bytes) except +
        void copy_rows(uintptr_t dst, size_t dst_pitch, uintptr_t src, size_t src_pitch,
                       size_t width, size_t rows) except +
        void add_int64(uintptr_t value, int64_t delta) except +
        void begin_capture() except +
        int64_t end_capture() except +
        void replay(int64_t graph) except +
        # logits [batch, vocab] float32, seeds [batch] uint64 -> tokens [batch] int64,
        # status [batch] int32, all device addresses
        void sample(uintptr_t logits, int64_t batch, int64_t vocab, uintptr_t seeds,
                    uint64_t step, const SamplingParams& params, uintptr_t tokens,
                    uintptr_t status) except +
        void check_sampled(uintptr_t status, int64_t batch,
                           const SamplingParams& params) except +


cdef extern from "gpu_transformer.h" namespace "vqrt" nogil:
    cdef cppclass GpuModelConfig:
        int64_t n_layer
        int64_t n_head
        int64_t n_embd
        int64_t vocab_size
        int64_t block_size
        int64_t sample_vocab

    cdef cppclass GpuWeights:
        pass

    string gpu_unavailable_reason() except +
    shared_ptr[const GpuWeights] upload_gpu_weights(
        const GpuModelConfig& config, const map[string, TensorView]& tensors) except +
    int64_t gpu_weight_matrix_bytes(const GpuWeights& weights)
    const GpuModelConfig& gpu_weights_config(const GpuWeights& weights) except +

    cdef cppclass GpuDecoderOptions:
        int64_t max_batch
        int64_t max_len
        bool use_graph

    cdef cppclass GpuTransformer:
        GpuTransformer(shared_ptr[const GpuWeights] weights,
                       const GpuDecoderOptions& options) except +
        # tokens [batch, length] -> logits [batch, sample_vocab] of the last position
        void prefill(const int64_t* tokens, int64_t batch, int64_t length, float* logits) except +
        # tokens [batch] at position pos -> logits [batch, sample_vocab]
        void step(const int64_t* tokens, int64_t batch, int64_t pos, float* logits) except +
        # seeds [batch] -> tokens [batch] from the last prefill's or step's logits
        void sample(const uint64_t* seeds, uint64_t step, const SamplingParams& params,
                    int64_t* tokens) except +
        # prefix [batch, prefix_length], seeds [batch] -> tokens [batch, steps]
        void generate(const int64_t* prefix, int64_t batch, int64_t prefix_length, int64_t steps,
                      const uint64_t* seeds, const SamplingParams& params,
                      int64_t* tokens) except +
        int64_t length()
        int64_t batch()
        const GpuDecoderOptions& options()
