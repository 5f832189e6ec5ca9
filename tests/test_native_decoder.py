"""vqrt.runtime.native_decoder (the C++ decoder in csrc/transformer.h) against the torch GPT on
golden set A: fp32 logits of the prefill and of every cached step, greedy tokens, fp16 / bf16 /
int8 weights against torch running the same dequantized weights, batch rows against rows alone,
thread counts, and the argument errors."""
import copy

import numpy as np
import pytest
import torch

from vqrt.runtime.native_decoder import GPTShape, NativeDecoder
from vqrt.runtime.sampling import sample_logits
from shared_data import GOLDEN

pytestmark = pytest.mark.skipif(not (GOLDEN / "refs.npz").is_file(),
                                reason=f"golden data not found at {GOLDEN}")


@pytest.fixture(scope="module")
def refs():
    with np.load(GOLDEN / "refs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def gpt():
    from vqrt.trainer.checkpoints import load_checkpoint
    return load_checkpoint(GOLDEN / "model.ckpt",
                           config=GOLDEN / "transformer.yaml").model.transformer


def shape_of(gpt) -> GPTShape:
    c = gpt.cfg
    return GPTShape(c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> bfloat16 bit patterns, round to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def store_linear(weight: np.ndarray, precision: str):
    """-> ({suffix: array}, {suffix: tag}, the fp32 weight the stored one stands for)."""
    if precision == "fp32":
        return {"": weight}, {"": "F32"}, weight
    if precision == "fp16":
        half = weight.astype(np.float16)
        return {"": half}, {"": "F16"}, half.astype(np.float32)
    if precision == "bf16":
        bits = bf16_bits(weight)
        return {"": bits}, {"": "BF16"}, (bits.astype(np.uint32) << 16).view(np.float32)
    peak = np.abs(weight).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return {"": q, "_scale": scale}, {"": "I8", "_scale": "F32"}, q * scale[:, None]


def native_weights(gpt, precision: str):
    """The torch GPT as "vqrt-native-1" arrays -> (tensors, dtypes, a torch GPT copy holding the
    dequantized Linear weights: the exact reference for that precision)."""
    def np32(t):
        return t.detach().float().numpy().copy()

    reference = copy.deepcopy(gpt)
    tensors = {"tok_emb": np32(gpt.tok_emb.weight), "pos_emb": np32(gpt.pos_emb)[0],
               "ln_f.weight": np32(gpt.ln_f.weight), "ln_f.bias": np32(gpt.ln_f.bias)}
    dtypes = {}

    def add(name, weight, ref_modules):
        arrays, tags, restored = store_linear(weight, precision)
        for suffix, array in arrays.items():
            tensors[name + suffix] = array
            dtypes[name + suffix] = tags[suffix]
        rows = 0
        for module in ref_modules:  # the fused rows go back to their modules
            n = module.weight.shape[0]
            module.weight.data = torch.from_numpy(restored[rows:rows + n].copy())
            rows += n

    for i, (block, ref_block) in enumerate(zip(gpt.blocks, reference.blocks)):
        p = f"blocks.{i}."
        attn, ref_attn = block.attn, ref_block.attn
        for ln in ("ln1", "ln2"):
            tensors[p + ln + ".weight"] = np32(getattr(block, ln).weight)
            tensors[p + ln + ".bias"] = np32(getattr(block, ln).bias)
        add(p + "attn.qkv.weight", np.concatenate(
            [np32(attn.query.weight), np32(attn.key.weight), np32(attn.value.weight)]),
            [ref_attn.query, ref_attn.key, ref_attn.value])
        tensors[p + "attn.qkv.bias"] = np.concatenate(
            [np32(attn.query.bias), np32(attn.key.bias), np32(attn.value.bias)])
        add(p + "attn.proj.weight", np32(attn.proj.weight), [ref_attn.proj])
        tensors[p + "attn.proj.bias"] = np32(attn.proj.bias)
        add(p + "mlp.fc.weight", np32(block.mlp[0].weight), [ref_block.mlp[0]])
        tensors[p + "mlp.fc.bias"] = np32(block.mlp[0].bias)
        add(p + "mlp.proj.weight", np32(block.mlp[2].weight), [ref_block.mlp[2]])
        tensors[p + "mlp.proj.bias"] = np32(block.mlp[2].bias)
    add("head.weight", np32(gpt.head.weight), [reference.head])
    return tensors, dtypes, reference


def stepped_logits(decoder, tokens: np.ndarray) -> np.ndarray:
    """tokens [B, T] -> logits [B, T, V]: a prefill of position 0, then one cached step each."""
    out = [decoder.prefill(tokens[:, :1])]
    for pos in range(1, tokens.shape[1]):
        out.append(decoder.step(tokens[:, pos], pos))
    return np.stack(out, axis=1)


@torch.no_grad()
def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(tokens)).numpy()


def test_fp32_prefill_and_every_step_match_torch(gpt, refs):
    tokens = refs["gpt_tokens"]  # [2, 65]: the whole block
    expected = torch_logits(gpt, tokens)
    decoder = NativeDecoder(shape_of(gpt), *native_weights(gpt, "fp32")[:2], max_batch=2)
    np.testing.assert_allclose(stepped_logits(decoder, tokens), expected, atol=1e-4, rtol=0)
    for length in (1, 30, 65):
        np.testing.assert_allclose(decoder.prefill(tokens[:, :length]),
                                   expected[:, length - 1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(expected, refs["gpt_logits"], atol=1e-4, rtol=0)


def greedy_tokens(decoder, cond: np.ndarray, steps: int) -> np.ndarray:
    """Greedy decoding with the native decoder and the C++ sampler -> int64 [B, steps]."""
    seeds = np.zeros(cond.shape[0], dtype=np.uint64)
    pick = lambda logits, pos: sample_logits(logits, top_k=logits.shape[1], seeds=seeds,
                                             step=pos, greedy=True)
    tokens = [pick(decoder.prefill(cond), cond.shape[1])]
    for pos in range(cond.shape[1], cond.shape[1] + steps - 1):
        tokens.append(pick(decoder.step(tokens[-1], pos), pos + 1))
    return np.stack(tokens, axis=1)


def test_greedy_tokens_equal_the_golden_ones(gpt, refs):
    decoder = NativeDecoder(shape_of(gpt), *native_weights(gpt, "fp32")[:2], max_batch=2)
    np.testing.assert_array_equal(greedy_tokens(decoder, refs["cond"], 64),
                                  refs["greedy_tokens"])


def int16_rows(_, inputs):
    """csrc/linear.h's int8 input: each row rounded to steps of max |row| / 32767."""
    x = inputs[0]
    peak = x.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(peak > 0, 32767.0 / peak, torch.zeros_like(peak))
    return (torch.round(x * inverse) * (peak / 32767.0),)


@pytest.mark.parametrize("precision, tolerance", [("fp16", 1e-4), ("bf16", 1e-4), ("int8", 2e-3)])
def test_quantized_weights_match_torch_on_the_same_weights(gpt, refs, precision, tolerance):
    """The same stored weights in torch, with an fp32 cache as torch's (the fp16 default of
    reduced-precision weights is tested below); int8 products also round their input rows to
    int16 (linear.h), which torch does through pre-hooks on each Linear. An input within float
    noise of a rounding boundary can round the other way (one step, 1/32767 of its row's peak,
    times a weight), which on this model moves logits by up to ~5e-4: int8 compares within
    2e-3."""
    tokens = refs["gpt_tokens"]
    tensors, dtypes, reference = native_weights(gpt, precision)
    if precision == "int8":
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_pre_hook(int16_rows)
    decoder = NativeDecoder(shape_of(gpt), tensors, dtypes, max_batch=2, kv_f16=False)
    got = stepped_logits(decoder, tokens)
    np.testing.assert_allclose(got, torch_logits(reference, tokens), atol=tolerance, rtol=0)
    drift = np.abs(got - torch_logits(gpt, tokens)).max()
    agree = (got.argmax(-1) == refs["gpt_logits"].argmax(-1)).mean()
    print(f"{precision}: max |logit - fp32 logit| {drift:.2e}, argmax agreement {agree:.3f}")


def test_bf16_activations_match_torch_with_rounded_inputs(gpt, refs):
    """bf16_activations rounds every product's input to bf16: torch does the same through
    pre-hooks on each Linear. An input within fp32 noise of a rounding boundary can round the
    other way (one bf16 step, 2^-8 relative), so the bound is a few bf16 steps of the logits."""
    tokens = refs["gpt_tokens"]
    tensors, dtypes, reference = native_weights(gpt, "bf16")
    for module in reference.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(
                lambda _, inputs: (inputs[0].to(torch.bfloat16).float(),))
    decoder = NativeDecoder(shape_of(gpt), tensors, dtypes, max_batch=2, bf16_activations=True,
                            kv_f16=False)
    got = stepped_logits(decoder, tokens)
    expected = torch_logits(reference, tokens)
    np.testing.assert_allclose(got, expected, atol=0.05, rtol=0)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.98
    drift = np.abs(got - torch_logits(gpt, tokens)).max()
    agree = (got.argmax(-1) == refs["gpt_logits"].argmax(-1)).mean()
    print(f"bf16 activations: max |logit - fp32 logit| {drift:.2e}, argmax agreement {agree:.3f}")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_cache_is_fp16_for_reduced_weights_by_default(gpt, refs, precision):
    """Reduced-precision weights default to an fp16 KV cache (keys and values rounded once):
    logits within a few 1e-3 of the fp32 cache's; fp32 weights keep fp32."""
    tokens = refs["gpt_tokens"]
    tensors, dtypes, _ = native_weights(gpt, precision)
    default = NativeDecoder(shape_of(gpt), tensors, dtypes, max_batch=2)
    assert default.kv_f16 == (precision != "fp32")
    exact = NativeDecoder(shape_of(gpt), tensors, dtypes, max_batch=2, kv_f16=False)
    np.testing.assert_allclose(stepped_logits(default, tokens), stepped_logits(exact, tokens),
                               atol=1e-2, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_batch_rows_equal_rows_alone_and_threads_do_not_matter(gpt, refs, precision):
    tokens = np.concatenate([refs["gpt_tokens"], refs["gpt_tokens"][:, ::-1]])[:, :40].copy()
    tensors, dtypes, _ = native_weights(gpt, precision)
    shape = shape_of(gpt)
    batched = stepped_logits(NativeDecoder(shape, tensors, dtypes, max_batch=4), tokens)
    for threads in (1, 2, 3):
        decoder = NativeDecoder(shape, tensors, dtypes, max_batch=4, num_threads=threads)
        assert decoder.num_threads == threads
        np.testing.assert_array_equal(stepped_logits(decoder, tokens), batched)
        for row in (0, 3):
            np.testing.assert_array_equal(stepped_logits(decoder, tokens[row:row + 1]),
                                          batched[row:row + 1])


def test_errors_name_the_tensor_and_the_limits(gpt):
    tensors, dtypes, _ = native_weights(gpt, "int8")
    shape = shape_of(gpt)
    missing = {k: v for k, v in tensors.items() if k != "blocks.1.ln2.bias"}
    with pytest.raises(ValueError, match=r"missing tensor blocks\.1\.ln2\.bias \[48\]"):
        NativeDecoder(shape, missing, dtypes)
    bad = dict(tensors)
    bad["blocks.0.attn.qkv.weight"] = bad["blocks.0.attn.qkv.weight"][:, :47].copy()
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight has shape \[144, 47\], "
                                         r"expected \[144, 48\]"):
        NativeDecoder(shape, bad, dtypes)
    with pytest.raises(ValueError, match="tag it in dtypes"):
        NativeDecoder(shape, dict(tensors, **{"head.weight": np.zeros((256, 48), np.uint16)}),
                      {k: v for k, v in dtypes.items() if k != "head.weight"})
    with pytest.raises(ValueError, match="tagged I8 and must be a int8 array, got float32"):
        NativeDecoder(shape, dict(tensors, **{"head.weight": np.zeros((256, 48), np.float32)}),
                      dtypes)
    decoder = NativeDecoder(shape, tensors, dtypes, max_batch=2)
    with pytest.raises(ValueError, match=r"batch 3 is outside \[1, max batch 2\]"):
        decoder.prefill(np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="token 256 at index 1 is outside the vocabulary"):
        decoder.prefill(np.array([[0, 256]]))
    decoder.prefill(np.zeros((2, 65), np.int64))
    with pytest.raises(ValueError, match=r"position 65 is beyond the max length 65 "
                                         r"\(block size 65\)"):
        decoder.step(np.zeros(2, np.int64), 65)
    with pytest.raises(ValueError, match="step batch 1 does not match the prefill batch 2"):
        decoder.step(np.zeros(1, np.int64), 3)
    decoder.reset()
    assert decoder.length == 0
