"""Generator: a bundle in, image tokens and images out, without torch.

    generator = Generator("bundle/")                          # backend "auto", device "auto"
    result = generator.generate(class_labels=[3, 5], params=GenerationParams(top_k=100, seed=7))
    result.tokens   # int64 [2, h, w]        result.images   # uint8 [2, H, W, 3]

For callers who stream or cancel, the same thing as a loop (onnxruntime-genai's shape):

    generation = generator.start(class_labels=[3], params=params)   # conditioning + prefill
    while not generation.done:
        generation.step()                 # one token per row; generation.tokens so far
        if user_gave_up: generation.cancel(); break                 # drops the KV cache
    result = generation.result()          # decodes the images

Sequence layout (the manifest's tokenization): [prefix tokens, image tokens in raster order];
image token k of a row sits at position P + k (P prefix tokens) and is drawn by the sampler
with the row's seed and step k. An image prefix (prefix_tokens, image completion) fills tokens
0..K-1 and sampling starts at k = K. The last image token is never fed back, so a grid fits the
transformer when P + h*w - 1 <= block size positions; a larger grid is sampled through sliding
windows of the training grid (runtime/decoding.py; GenerationParams.window_stride).
Tokens are drawn from the first codebook_size logits (the image codes): a vocabulary larger
than the codebook also holds condition tokens, which are not image codes.

Thread safety: after construction a Generator is read-only (the bundle, the ONNX Runtime
sessions, whose run() is thread-safe, and the native weights, which the decoder only reads)
but for its pool of idle decoding states, which a lock guards, so any number of threads may
call generate() / start() on one Generator at once. Each start() takes a decoding state (a KV
cache sized for its batch: a new one, or one a finished generation of that batch gave back,
runtime.backends.StatePool), owned by its Generation alone until its last token; a Generation
is driven by one thread at a time, and any thread may cancel() it (the step running then
finishes its token and no further step runs). A state goes back to the pool only from the
driving thread, after the last token's step; a generation cancelled earlier drops its state,
since a step may still be running on it. The tokens of a row do not depend on the thread,
the batch around it, the backend's thread count or the state's earlier generations
(tests/test_reliability_threads.py, tests/test_runtime_generate.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from vqrt.runtime.backends import (
    CudaBackend, NativeBackend, OrtBackend, StatePool, choose_backend)
from vqrt.runtime.bundle import load_bundle
from vqrt.runtime.conditioning import ClassLabels, Conditioner, batch_rows
from vqrt.runtime.decoding import Decoding, new_decoding
from vqrt.runtime.first_stage import FirstStage, to_pixels
from vqrt.runtime.onnx_sessions import execution_providers
from vqrt.runtime.params import GenerationParams, GenerationResult, RequestError, StageTimings
from vqrt.runtime.sampling import sample_logits
from vqrt.runtime.tensorrt_backend import TensorRTBackend

Progress = Callable[[int, int], None]  # (tokens done, tokens in the grid)
# More intra-op threads than any machine has cores: ONNX Runtime gives each session (the tiled
# decoder has dozens) a pool of this many, so a typo would start tens of thousands of threads.
MAX_THREADS = 1024


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class Generation:
    """One request being decoded: its decoding (KV cache), the tokens drawn so far, its timings.

    Not thread-safe on its own (one caller drives it); independent of every other Generation.
    """

    def __init__(self, *, generator: "Generator", decoding: Decoding, logits: Optional[np.ndarray],
                 tokens: np.ndarray, start: int, grid: Tuple[int, int],
                 params: GenerationParams, timings: Dict[str, float], decode: bool):
        self._generator = generator
        self._decoding: Optional[Decoding] = decoding
        # float32 [B, V] predicting image token self._count, or None: on the GPU (state.draw)
        self._logits = logits
        self._tokens = tokens  # int64 [B, h*w]; [:, :self._count] are final
        self._count = start
        self._grid = grid
        self._params = params
        self._seeds = params.row_seeds(tokens.shape[0])
        self._timings = timings
        self._decode = decode  # whether result() makes the images
        self._cancelled = False
        self._failed: Optional[str] = None  # why a step failed; the generation is then over

    @property
    def batch(self) -> int:
        return self._tokens.shape[0]

    @property
    def total(self) -> int:
        """Image tokens per row (h * w)."""
        return self._tokens.shape[1]

    @property
    def position(self) -> int:
        """Image tokens per row that are final (the image prefix included)."""
        return self._count

    @property
    def done(self) -> bool:
        return self._cancelled or self._count == self.total

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def tokens(self) -> np.ndarray:
        """int64 [B, position]: the image tokens so far, raster order (a copy)."""
        return self._tokens[:, :self._count].copy()

    def step(self) -> np.ndarray:
        """Draws the next image token of every row -> int64 [B], and computes the logits of
        the one after it (unless it is the last)."""
        # One read of the decoding: cancel() from another thread may clear the attribute while
        # this step runs; the step then finishes on its own reference and no further one starts.
        decoding = self._decoding
        if self._failed is not None:
            raise self._failure("start a new one")
        if decoding is None:
            raise RequestError("this generation is cancelled" if self._cancelled
                               else "this generation is done: call result()")
        started = time.perf_counter()
        token = self._sample(decoding)
        sampled = time.perf_counter()
        self._timings["sampling_s"] += sampled - started
        self._tokens[:, self._count] = token
        self._count += 1
        if self._count < self.total and not self._cancelled:
            try:
                self._logits = decoding.logits(self._count)
            except BaseException as e:
                # The token is drawn but its successor's logits are not: the KV cache may hold
                # half a step, so the generation ends here (its state is dropped, not pooled)
                # rather than a retry drawing from stale logits.
                self._failed = " ".join(str(e).split()) or type(e).__name__
                self._decoding = None
                raise
            self._timings["steps_s"] += time.perf_counter() - sampled
        elif self._count == self.total:
            # The KV cache is no longer needed: to the next generation of this batch. Only
            # here, on the thread that drives this generation and after its last call to it.
            self._decoding = None
            self._generator._states.give_back(self.batch, decoding.state)
        return token

    def _failure(self, then: str) -> RequestError:
        return RequestError(f"this generation failed after image token {self._count - 1} "
                            f"({self._failed}): {then}")

    def _sample(self, decoding: Decoding) -> np.ndarray:
        """The next token of every row, int64 [B]: the CPU sampler over the logits the decoding
        returned (the first codebook_size of them), or, where they stayed on the GPU (the cuda
        and tensorrt states), its state's draw() there; refusals as RequestError."""
        p = self._params
        top_k = self._generator.codebook_size if p.top_k is None else p.top_k
        if self._logits is None:
            try:
                return decoding.state.draw(self._seeds, self._count, top_k=top_k, top_p=p.top_p,
                                           temperature=p.temperature, greedy=p.greedy)
            except ValueError as e:  # a NaN or +inf logit, or the temperature overflowing
                raise RequestError(f"image token {self._count}: {e} (the "
                                   f"{self._generator.backend} backend over this bundle's "
                                   "weights)") from None
        codes = self._generator.codebook_size
        logits = self._logits if self._logits.shape[1] == codes else np.ascontiguousarray(
            self._logits[:, :codes])
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():  # the sampler refuses NaN and +inf; name the token and row here
            row = int(np.flatnonzero(~finite)[0])
            bad = "NaN" if np.isnan(logits[row]).any() else "inf"
            raise RequestError(f"the transformer's logits for image token {self._count} of row "
                               f"{row} hold {bad} (the {self._generator.backend} backend over "
                               f"this bundle's weights): no token can be drawn; check the "
                               f"bundle with `vqrt inspect` and rebuild it")
        try:
            return sample_logits(logits, top_k=top_k, top_p=p.top_p, temperature=p.temperature,
                                 seeds=self._seeds, step=self._count, greedy=p.greedy,
                                 num_threads=self._generator.num_threads)
        except ValueError as e:  # e.g. a temperature so small that logit / T overflows
            raise RequestError(f"image token {self._count}: {e}") from None

    def cancel(self) -> None:
        """Stops the generation and drops its KV cache (never handed to another generation: a
        step may still be running on it); tokens stay readable. May be called from another
        thread: a step already running finishes its token, and no further logits are computed
        or steps run."""
        self._cancelled = self._count < self.total
        self._decoding = None

    def result(self) -> GenerationResult:
        """The finished tokens [B, h, w] and, unless start(decode=False), their images (decoded
        now)."""
        if self._failed is not None:
            raise self._failure("no result (its tokens are in .tokens)")
        if self._cancelled:
            raise RequestError(f"this generation was cancelled after {self._count} of "
                               f"{self.total} tokens: no result (its tokens are in .tokens)")
        if not self.done:
            raise RequestError(f"this generation has {self._count} of {self.total} tokens: "
                               "step() until done before result()")
        grid = self._tokens.reshape((self.batch,) + self._grid)
        images = None
        if self._decode:
            started = time.perf_counter()
            images = self._generator.decode(grid)
            self._timings["image_decode_s"] = time.perf_counter() - started
        return GenerationResult(tokens=grid, images=images, row_seeds=self._seeds,
                                timings=StageTimings(**self._timings),
                                backend=self._generator.backend)


class Generator:
    """A loaded bundle: generate images, or encode and decode through its VQGAN.

    Args:
        bundle_dir: a directory written by `vqrt build`.
        backend: "auto" (the first of the bundle's backends that this runtime runs, in the
            manifest's order of preference), "native" (the C++ decoder on the CPU),
            "onnxruntime" (the transformer graphs), "cuda" (the C++ decoder on an NVIDIA GPU
            over the same native weights: csrc/gpu_transformer.h) or "tensorrt" (the bundle's
            TensorRT engines: runtime/tensorrt_backend.py); "auto" chooses neither cuda nor
            tensorrt until they have been measured on a GPU (see BENCHMARKS.md).
        device: where the ONNX Runtime graphs run: "auto" (the CUDA provider where this
            onnxruntime has one, else the CPU), "cpu" or "cuda" (an error if the CUDA provider
            is missing or does not take a graph). The native backend runs on the CPU.
            `providers` says what really runs each graph.
        num_threads: threads of the native decoder, the sampler and ONNX Runtime's intra-op
            pool; 0 = their defaults (one per core). Never changes the tokens. Each ONNX
            Runtime session has a pool of its own, idle between calls (the tiled decoder has
            one session per conv step: 32 for golden set A's small decoder), so a Generator
            holds about sessions x (num_threads - 1) threads: on a many-core machine, or in a
            container with a limit on processes, give num_threads explicitly. At most
            MAX_THREADS.
        tile: the image decoder's tile side in latent positions (None: the whole image up to
            a latent of runtime.tiled_decode.WHOLE_GRAPH_SIDE, or any the bundle allows with
            decoder engine tensorrt, or within max_memory, else tiles sized per layer to fit,
            TiledDecoder.plan). Never changes the image beyond rounding.
        max_memory: bytes the image decoder may use; a request that cannot fit fails in
            start() (or decode()) before anything is allocated. A plan per decode call, from
            an estimate (runtime/tiled_decode.py): concurrent decodes each plan for it, and
            the whole-image graph's session keeps its largest call's memory between calls
            (its arena), so a server bounds the decodes it runs at once itself.
        decoder_engine: what runs the image decoder's graphs: "onnxruntime" (fp32, on
            `device`), "openvino" (the CPU, bf16 arithmetic where the CPU has it: faster,
            close to but not equal to fp32; needs the openvino package), "tensorrt" (the
            bundle's VQGAN engines on the GPU, the encoder's and cond encoder's too:
            runtime/tensorrt_backend.py, never run yet), or
            "auto" (the default: openvino for bundles built with --precision bf16 where it is
            installed and the decoder runs on the CPU, else onnxruntime; never tensorrt).
    """

    def __init__(self, bundle_dir: Union[str, Path], backend: str = "auto", *,
                 device: str = "auto", num_threads: int = 0, tile: Optional[int] = None,
                 max_memory: Optional[int] = None, decoder_engine: str = "auto"):
        self.bundle = load_bundle(bundle_dir)
        if not _is_integer(num_threads) or not 0 <= num_threads <= MAX_THREADS:
            raise RequestError(f"num_threads must be an integer in [0, {MAX_THREADS}] (0 = one "
                               f"per core), got {num_threads!r}")
        if tile is not None and (not _is_integer(tile) or tile < 1):
            raise RequestError(f"tile must be an integer of at least 1 latent position, got "
                               f"{tile!r}")
        if max_memory is not None and (not _is_integer(max_memory) or max_memory < 1):
            raise RequestError(f"max_memory must be a positive integer number of bytes, got "
                               f"{max_memory!r}")
        num_threads, tile = int(num_threads), None if tile is None else int(tile)
        max_memory = None if max_memory is None else int(max_memory)
        self.num_threads = num_threads
        self.tile, self.max_memory = tile, max_memory
        m = self.bundle.manifest
        providers = execution_providers(device)
        self._first_stage = FirstStage(self.bundle, providers, device, num_threads,
                                       decoder_engine)
        self.codebook_size = m.first_stage.codebook_size
        self._transformer: Optional[Union[NativeBackend, CudaBackend, OrtBackend,
                                         TensorRTBackend]] = None
        self._states: Optional[StatePool] = None  # idle decoding states of the transformer
        self._conditioner: Optional[Conditioner] = None
        self.backend = "onnxruntime"  # a first stage alone: only its graphs
        if m.kind == "net2net":
            self.backend = choose_backend(self.bundle, backend)
            if self.backend == "native":
                self._transformer = NativeBackend(self.bundle, num_threads)
            elif self.backend == "cuda":
                self._transformer = CudaBackend(self.bundle, num_threads)
            elif self.backend == "tensorrt":
                self._transformer = TensorRTBackend(self.bundle)
            else:
                self._transformer = OrtBackend(self.bundle, providers, device, num_threads)
            self._states = StatePool(self._transformer.new_state)
            self._conditioner = Conditioner(self.bundle, providers, device, num_threads,
                                            self._first_stage.engine_graphs)

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        """graph -> the ONNX Runtime execution providers its session really uses, best first
        (the native backend's transformer is not a graph and is not listed)."""
        found = dict(self._first_stage.providers)
        for part in (self._transformer, self._conditioner):
            if part is not None:
                found.update(part.providers)
        return found

    # --- generation ---------------------------------------------------------------------------

    def start(self, *, class_labels: Optional[ClassLabels] = None,
              cond: Optional[np.ndarray] = None, prefix_tokens: Optional[np.ndarray] = None,
              batch_size: Optional[int] = None, params: GenerationParams = GenerationParams(),
              decode: bool = True) -> Generation:
        """Checks the request, makes the prefix tokens and runs the prefill.

        class_labels: class ids, one per row (class-conditional bundles).
        cond: float32 [B, C, H, W] condition map (bundles with a cond_encoder graph or
            coordinate conditioning); see conditioning.segmentation_one_hot.
        prefix_tokens: int64 [B, K] image codes in raster order that the image starts with
            (image completion; K < h*w). The top rows of an image: encode(images)[:, :rows]
            flattened.
        batch_size: rows; default the rows of the conditioning / prefix. One row of either is
            repeated to the batch.
        decode: False for tokens only (result().images None): no image decode, and no check
            that one would fit max_memory.
        """
        if not isinstance(params, GenerationParams):
            raise RequestError(f"params must be a GenerationParams, got {type(params).__name__}")
        if batch_size is not None and not _is_integer(batch_size):
            raise RequestError(f"batch_size must be an integer, got {batch_size!r}")
        if self._transformer is None:
            raise RequestError(f"{self.bundle.path}: the bundle is a first stage alone "
                               "(kind vqgan): it encodes and decodes but has no transformer to "
                               "generate with")
        h, w = self._first_stage.latent_grid(params.size)
        total = h * w
        if params.top_k is not None and params.top_k > self.codebook_size:
            raise RequestError(f"top_k {params.top_k} exceeds the bundle's vocabulary of "
                               f"{self.codebook_size} image codes")
        started = time.perf_counter()
        f = self._first_stage.factor
        cond_rows = self._conditioner.prefix(class_labels, cond, image_size=(h * f, w * f))
        image_rows = np.zeros((1, 0), dtype=np.int64)  # [N', K]
        if prefix_tokens is not None:
            image_rows = self._first_stage.check_codes(prefix_tokens, "prefix_tokens")
            if image_rows.ndim != 2 or image_rows.shape[1] >= total:
                raise RequestError(f"prefix_tokens must be [B, K] with K < {total} (the "
                                   f"{h}x{w} grid), got shape {list(image_rows.shape)}")
        batch = batch_size if batch_size is not None else max(len(cond_rows), len(image_rows))
        batch = batch_rows(len(cond_rows), batch, "the conditioning")
        batch = batch_rows(len(image_rows), batch, "prefix_tokens")
        self._first_stage.check_batch(batch)
        if decode:  # the image will fit, or the request fails now
            self._first_stage.plan_decode(batch, h, w, self.tile, self.max_memory)
        tokens = np.zeros((batch, total), dtype=np.int64)  # the generation's buffer
        tokens[:, :image_rows.shape[1]] = image_rows
        conditioned = time.perf_counter()
        cond_prefix = np.ascontiguousarray(np.broadcast_to(cond_rows, (batch, cond_rows.shape[1])))
        decoding = new_decoding(
            self._states, cond_prefix,
            spatial=self._conditioner.rule in ("cond_encoder", "coord"), tokens=tokens,
            grid=(h, w), window=self.bundle.manifest.first_stage.training_grid,
            stride=params.window_stride, block=self.bundle.manifest.transformer.block_size)
        logits = decoding.logits(image_rows.shape[1])
        prefilled = time.perf_counter()
        timings = {"conditioning_s": conditioned - started, "prefill_s": prefilled - conditioned,
                   "steps_s": 0.0, "sampling_s": 0.0, "image_decode_s": 0.0}
        return Generation(generator=self, decoding=decoding, logits=logits, tokens=tokens,
                          start=image_rows.shape[1], grid=(h, w), params=params, timings=timings,
                          decode=bool(decode))

    def generate(self, *, class_labels: Optional[ClassLabels] = None,
                 cond: Optional[np.ndarray] = None, prefix_tokens: Optional[np.ndarray] = None,
                 batch_size: Optional[int] = None, params: GenerationParams = GenerationParams(),
                 progress: Optional[Progress] = None, decode: bool = True) -> GenerationResult:
        """start(), step until done (calling progress(tokens done, tokens per row) after each
        step), result(). Arguments as for start()."""
        generation = self.start(class_labels=class_labels, cond=cond,
                                prefix_tokens=prefix_tokens, batch_size=batch_size, params=params,
                                decode=decode)
        while not generation.done:
            generation.step()
            if progress is not None:
                progress(generation.position, generation.total)
        return generation.result()

    # --- the VQGAN ----------------------------------------------------------------------------

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, C, H, W] in [-1, 1] (first_stage.from_pixels makes it from uint8) ->
        code indices int64 [B, h, w]."""
        return self._first_stage.encode(images)

    def decode_raw(self, tokens: np.ndarray) -> np.ndarray:
        """Code indices int64 [B, h, w] -> the decoder's output float32 [B, C, H, W],
        unclamped."""
        return self._first_stage.decode(tokens, self.tile, self.max_memory)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Code indices int64 [B, h, w] -> uint8 [B, H, W, C] (first_stage.to_pixels)."""
        return to_pixels(self.decode_raw(tokens))
