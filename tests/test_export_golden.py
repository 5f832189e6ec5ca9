"""`vqrt build` on golden set A: ONNX Runtime reproduces the upstream references through the
bundle (fp32 and fp16), and the graphs have the interface and precision islands they claim.

fp32: integers exactly, floats within 1e-4 (measured fp32-vs-fp64 error ~5e-6).
fp16: integers exactly too. That rests on measured margins, not luck: the smallest argmin
margin is 0.0196 and the smallest greedy logit margin 0.0298, while the fp16 graphs' largest
logit error is ~0.0075 (a gap moves by at most twice that). Images: PSNR >= 40 dB.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vqrt.export.build import BuildOptions, build_bundle
from vqrt.export.parity import psnr_db
from vqrt.runtime.bundle import SCHEMA_VERSION, load_bundle
from vqrt.runtime.ort_transformer import OrtTransformer, greedy
from shared_data import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "model.ckpt").is_file(),
                                reason=f"golden data not found at {GOLDEN}")
ATOL = 1e-4


@pytest.fixture(scope="module")
def refs():
    return np.load(GOLDEN / "refs.npz")


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def bundle(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"golden-{request.param}") / "bundle"
    build_bundle(GOLDEN / "model.ckpt", out, BuildOptions(precision=request.param),
                 config=GOLDEN / "transformer.yaml", log=lambda line: None)
    return load_bundle(out)


def run_graph(bundle, name, **inputs):
    session = ort.InferenceSession(str(bundle.graph_path(name)),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def is_fp32(bundle) -> bool:
    return bundle.manifest.requested_precision == "fp32"


def test_encoder_indices_exact(bundle, refs):
    indices = run_graph(bundle, "encoder", image=refs["x"])
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, refs["indices"])


@pytest.mark.parametrize("indices, image", [("indices", "dec"), ("large_indices", "dec_large"),
                                            ("greedy_grid", "greedy_image")])
def test_decoder(bundle, refs, indices, image):
    decoded = run_graph(bundle, "decoder", indices=refs[indices])
    assert decoded.dtype == np.float32 and decoded.shape == refs[image].shape
    if is_fp32(bundle):
        np.testing.assert_allclose(decoded, refs[image], rtol=0, atol=ATOL)
    else:
        assert psnr_db(refs[image], decoded) >= 40.0


def test_prefill_logits(bundle, refs):
    transformer = OrtTransformer.from_bundle(bundle, batch=2)
    logits = transformer.prefill(refs["gpt_tokens"])
    assert logits.dtype == np.float32 and logits.shape == (2, 65, 256)
    np.testing.assert_allclose(logits, refs["gpt_logits"], rtol=0,
                               atol=ATOL if is_fp32(bundle) else 0.02)


def test_greedy_tokens_exact(bundle, refs):
    transformer = OrtTransformer.from_bundle(bundle, batch=2)
    tokens = greedy(transformer, refs["cond"], steps=64)
    np.testing.assert_array_equal(tokens, refs["greedy_tokens"])


def test_kv_cache_decoding_equals_full_recomputation(bundle, refs):
    """64 greedy steps through the step graph and its in-place KV buffer, against re-running
    the prefill graph over the whole sequence before every step."""
    cached = OrtTransformer.from_bundle(bundle, batch=2)
    tokens = greedy(cached, refs["cond"], steps=64)
    full = OrtTransformer.from_bundle(bundle, batch=2)
    sequence = refs["cond"]
    for step in range(64):
        full.reset()
        next_token = full.prefill(sequence)[:, -1].argmax(axis=-1)[:, None]
        np.testing.assert_array_equal(next_token[:, 0], tokens[:, step], err_msg=f"step {step}")
        sequence = np.concatenate([sequence, next_token], axis=1)
    # The buffer the steps wrote in place holds what one prefill of the sequence writes.
    full.reset()
    full.prefill(sequence[:, :-1])
    np.testing.assert_allclose(cached.kv_cache, full.kv_cache, rtol=0,
                               atol=1e-5 if is_fp32(bundle) else 1e-2)


def test_manifest_describes_the_model(bundle):
    m = bundle.manifest
    assert m.schema_version == SCHEMA_VERSION and m.kind == "net2net"
    assert m.backends == ("native", "onnxruntime")
    fs = m.first_stage
    assert (fs.training_size, fs.training_grid, fs.downsampling_factor) == ((64, 64), (8, 8), 8)
    assert (fs.codebook_size, fs.codebook_dim, fs.quantizer) == (256, 48, "vq")
    t = m.transformer
    assert (t.vocab_size, t.block_size, t.n_layer, t.n_head, t.n_embd, t.head_dim) == (
        256, 65, 2, 4, 48, 12)
    assert m.tokenization.order == "raster" and m.tokenization.layout == ("cond", "image")
    assert m.tokenization.prefix == "class_id"
    assert (m.conditioning.kind, m.conditioning.n_classes, m.conditioning.prefix_tokens) == (
        "class", 8, 1)
    assert m.limits.max_batch == 8 and m.limits.max_latent == (8, 8)
    assert m.limits.max_sequence == 65
    dtype = "float32" if is_fp32(bundle) else "float16"
    assert m.kv_cache.dtype == dtype and m.kv_cache.shape == (2, 2, "batch", 4, 65, 12)
    assert m.native.precision == m.requested_precision
    assert set(m.graphs) == {"encoder", "decoder", "transformer_prefill", "transformer_step"}
    assert m.parity.passed and not m.parity.drift_allowed
    td = m.tiled_decoder
    assert (td.format, td.program, td.tensors, td.weights) == (
        "vqrt-tiled-decoder-3", "tiled_decoder/program.json",
        "tiled_decoder/tensors.safetensors", "tiled_decoder/weights.bin")
    paths = {e.path for e in m.files}
    assert {p for p in paths if not p.startswith("tiled_decoder/")} == {
        "encoder.onnx", "decoder.onnx", "transformer_prefill.onnx", "transformer_step.onnx",
        "transformer_weights.bin", "native_weights.safetensors"}
    # One graph per conv step of the golden decoder: post_quant_conv, conv_in, 2 x 2 in the mid
    # blocks, 2 + 4 for the projections of the mid and up.3 attentions, 4 levels x 2 blocks x 2,
    # 3 upsamples, conv_out.
    assert sum(p.endswith(".onnx") for p in paths if p.startswith("tiled_decoder/")) == 32
    step = m.graphs["transformer_step"]
    assert [(t.name, t.dtype, t.shape) for t in step.inputs] == [
        ("tokens", "int64", ("batch", 1)), ("position", "int64", ()),
        ("kv_cache", dtype, (2, 2, "batch", 4, 65, 12))]
    assert [(t.name, t.dtype) for t in step.outputs] == [
        ("kv_cache_out", dtype), ("logits", "float32")]
    assert m.tools["onnxruntime"] == ort.__version__


def consumers(model: onnx.ModelProto, name: str):
    return [node.op_type for node in model.graph.node if name in node.input]


def test_kv_cache_is_never_concatenated(bundle):
    for name in ("transformer_prefill", "transformer_step"):
        model = onnx.load(str(bundle.graph_path(name)), load_external_data=False)
        assert set(consumers(model, "kv_cache")) == {"Slice", "ScatterElements"}
        assert consumers(model, "kv_cache").count("ScatterElements") == 1


def test_codebook_lookup_is_a_gather(bundle):
    model = onnx.load(str(bundle.graph_path("decoder")))
    assert consumers(model, "indices") == ["Gather"]
    assert not any(node.op_type == "OneHot" for node in model.graph.node)


def test_graphs_pass_the_checker(bundle):
    for graph in bundle.manifest.graphs.values():
        onnx.checker.check_model(str(bundle.file(graph.file)), full_check=True)


def test_fp16_graphs_keep_fp32_islands(bundle):
    """Normalisation, softmax and the codebook argmin take fp32 inputs in every graph."""
    islands = {"LayerNormalization", "InstanceNormalization", "Softmax", "ArgMin"}
    for name, graph in bundle.manifest.graphs.items():
        model = onnx.shape_inference.infer_shapes(
            onnx.load(str(bundle.file(graph.file)), load_external_data=False))
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(model.graph.value_info) + list(model.graph.input)}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        found = [node for node in model.graph.node if node.op_type in islands]
        assert found, name
        for node in found:
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, (name, node.name)
        if not is_fp32(bundle):
            assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
