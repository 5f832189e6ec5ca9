"""vqrt.runtime.sampling and vqrt._native: Philox, exact small distributions, the sampler against
a plain numpy reference of its rules, support, frequency, reproducibility, errors, and the SIMD
variants against the generic kernels."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from cpu_flags import cpu_flags
from vqrt import _native
from vqrt.runtime.sampling import sample_logits, sampling_probs

LOG4 = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Philox4x32-10: Random123 known answers, and the uniform built on it.

@pytest.mark.parametrize("counter, key, expected", [
    ([0, 0, 0, 0], [0, 0], (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ([0xffffffff] * 4, [0xffffffff] * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_philox_known_answers(counter, key, expected):
    assert _native.philox4x32_10(counter, key) == expected


def test_philox_uniform_layout():
    seed, step, stream = 0x0123456789ABCDEF, 0x7FFFFFFF3, 5
    r = _native.philox4x32_10([step & 0xFFFFFFFF, step >> 32, stream, 0],
                              [seed & 0xFFFFFFFF, seed >> 32])
    bits = ((r[0] << 21) ^ (r[1] >> 11)) & ((1 << 53) - 1)
    assert _native.philox_uniform(seed, step, stream) == bits / 2.0**53


# ---------------------------------------------------------------------------------------------
# Exact distributions on small cases.

def test_probs_top_k_of_four():
    np.testing.assert_allclose(sampling_probs(LOG4, top_k=3)[0], [0, 2 / 9, 3 / 9, 4 / 9], atol=1e-7)
    np.testing.assert_allclose(sampling_probs(LOG4, top_k=4)[0], [0.1, 0.2, 0.3, 0.4], atol=1e-7)


def test_probs_ties_at_kth_value_are_kept():
    x = np.array([[1, 2, 2, 2, 0]], dtype=np.float32)
    np.testing.assert_allclose(sampling_probs(x, top_k=2)[0], [0, 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-15)
    np.testing.assert_allclose(sampling_probs(x, top_k=1)[0], [0, 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-15)


def test_probs_top_p_hand_computed():
    # probabilities 0.15, 0.5, 0.05, 0.3: in walk order 0.5, 0.3, 0.15, 0.05 with mass before each
    # 0, 0.5, 0.8, 0.95; a token goes once the mass before it exceeds top_p.
    x = np.log(np.array([[0.15, 0.5, 0.05, 0.3]], dtype=np.float32))
    np.testing.assert_allclose(sampling_probs(x, top_k=4, top_p=0.7)[0], [0, 0.625, 0, 0.375], atol=1e-7)
    np.testing.assert_allclose(sampling_probs(x, top_k=4, top_p=0.85)[0],
                               np.array([0.15, 0.5, 0, 0.3]) / 0.95, atol=1e-7)
    np.testing.assert_array_equal(sampling_probs(x, top_k=4, top_p=0.1)[0], [0, 1, 0, 0])
    # top-p acts on the top-k survivors: k=2 leaves 0.625 / 0.375, and 0.625 > 0.6.
    np.testing.assert_array_equal(sampling_probs(x, top_k=2, top_p=0.6)[0], [0, 1, 0, 0])
    # Exact ties: before = 0, .25, .5, .75 and 0.5 is not > 0.5, so three tokens stay.
    flat = np.full((1, 4), 3.0, dtype=np.float32)
    np.testing.assert_array_equal(sampling_probs(flat, top_k=4, top_p=0.5)[0], [1 / 3, 1 / 3, 1 / 3, 0])


def test_probs_temperature_before_filtering():
    x = np.log(np.array([[1, 2, 3, 4]], dtype=np.float32))
    np.testing.assert_allclose(sampling_probs(x, top_k=4, temperature=0.5)[0],
                               np.array([1, 4, 9, 16]) / 30, atol=1e-6)
    # after temperature the mass before 9/30 is 16/30 and before 4/30 is 25/30 > 0.8
    np.testing.assert_allclose(sampling_probs(x, top_k=4, top_p=0.8, temperature=0.5)[0],
                               [0, 0, 9 / 25, 16 / 25], atol=1e-6)


def test_probs_masked_tokens_and_greedy():
    x = np.array([[-np.inf, 0, -np.inf, 0, -np.inf]], dtype=np.float32)
    for k in (1, 3, 5):
        np.testing.assert_array_equal(sampling_probs(x, top_k=k)[0], [0, 0.5, 0, 0.5, 0])
    g = np.array([[0.5, 3, -np.inf, 3, 1]], dtype=np.float32)
    np.testing.assert_array_equal(sampling_probs(g, top_k=1, greedy=True, temperature=0)[0],
                                  [0, 1, 0, 0, 0])
    assert sample_logits(np.repeat(g, 3, 0), top_k=1, greedy=True, temperature=0.0,
                         seeds=[1, 2, 3], step=4).tolist() == [1, 1, 1]


# ---------------------------------------------------------------------------------------------
# The sampler against the rules written the plain way (full sort, numpy, one row at a time).

def reference_draw(x, u, *, top_k, top_p=1.0, temperature=1.0):
    """Token for one row x [V] float32 and uniform u, following csrc/sampling.h step by step."""
    s = x if temperature == 1.0 else x / np.float32(temperature)
    order = np.lexsort((np.arange(len(s)), -s.astype(np.float64)))  # s descending, index ascending
    kth = s[order[top_k - 1]]
    kept = [i for i in order if s[i] >= kth and s[i] > -np.inf]
    weight = [np.exp(np.float64(s[i]) - np.float64(s[kept[0]])) for i in kept]
    total = 0.0
    for w in weight:
        total += w
    if np.float32(top_p) < 1:
        before, n = 0.0, len(kept)
        for j, w in enumerate(weight):
            if before > np.float64(np.float32(top_p)):
                n = j
                break
            before += w / total
        kept, weight = kept[:n], weight[:n]
        total = 0.0
        for w in weight:
            total += w
    cum = 0.0
    for token, w in zip(kept, weight):
        cum += w
        if cum > u * total:
            return token
    return [t for t, w in zip(kept, weight) if w > 0][-1]


@pytest.mark.parametrize("V, k, top_p, temperature, step", [
    (5, 2, 1.0, 1.0, 1.0), (64, 10, 0.8, 1.0, 0.25), (1024, 7, 0.9, 1.3, 0.0),
    (1024, 100, 0.95, 0.6, 0.1), (1024, 1024, 1.0, 1.0, 0.0), (4000, 4000, 0.3, 0.9, 0.05),
])
def test_sampler_matches_reference(V, k, top_p, temperature, step):
    rng = np.random.default_rng(V + k)
    x = rng.normal(0, 2.5, size=(8, V)).astype(np.float32)
    if step:
        x = (np.round(x / step) * step).astype(np.float32)
    x[1, ::3] = -np.inf
    seeds = rng.integers(0, 2**64, size=8, dtype=np.uint64)
    for t in (0, 9):
        out = sample_logits(x, top_k=k, top_p=top_p, temperature=temperature, seeds=seeds, step=t)
        expected = [reference_draw(x[b], _native.philox_uniform(int(seeds[b]), t), top_k=k,
                                   top_p=top_p, temperature=temperature) for b in range(8)]
        assert out.tolist() == expected


# ---------------------------------------------------------------------------------------------
# Support and frequency: rows of identical logits, distinct seeds, several steps.

def draw_counts(x, rows, steps, **params):
    logits = np.ascontiguousarray(np.broadcast_to(x, (rows, x.shape[-1])))
    seeds = np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    counts = np.zeros(x.shape[-1], dtype=np.int64)
    for step in range(steps):
        counts += np.bincount(sample_logits(logits, seeds=seeds, step=step, **params),
                              minlength=x.shape[-1])
    return counts


def test_support_with_ties():
    rng = np.random.default_rng(21)
    x = (np.round(rng.normal(0, 1.5, size=64) / 0.5) * 0.5).astype(np.float32)
    for params in (dict(top_k=3), dict(top_k=10, top_p=0.7), dict(top_k=20, top_p=0.3, temperature=0.5)):
        probs = sampling_probs(x[None], **params)[0]
        counts = draw_counts(x, 2000, 5, **params)
        assert (counts[probs == 0] == 0).all()
        kth = np.sort(x)[::-1][params["top_k"] - 1]
        if "top_p" not in params:  # every token tied with the k-th value is in the support
            assert set(np.flatnonzero(probs)) == set(np.flatnonzero(x >= kth))


@pytest.mark.parametrize("params", [
    dict(top_k=1), dict(top_k=7), dict(top_k=100), dict(top_k=1024),
    dict(top_k=100, top_p=0.9, temperature=0.7), dict(top_k=1024, top_p=0.6, temperature=1.5),
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_frequencies_match_distribution(params):
    x = np.random.default_rng(1).normal(0, 2, size=1024).astype(np.float32)
    probs = sampling_probs(x[None], **params)[0]
    counts = draw_counts(x, 2000, 50, **params)  # 10^5 draws
    n = counts.sum()
    assert (counts[probs == 0] == 0).all()
    cosine = counts @ probs / np.linalg.norm(counts) / np.linalg.norm(probs)
    assert cosine > 0.99
    expected = n * probs
    big = expected >= 5
    f_obs = np.append(counts[big], counts[~big].sum())
    f_exp = np.append(expected[big], expected[~big].sum())
    keep = f_exp > 0
    if keep.sum() > 1:
        assert stats.chisquare(f_obs[keep], f_exp[keep]).pvalue > 1e-4


# ---------------------------------------------------------------------------------------------
# Reproducibility.

def test_token_independent_of_batch_position_and_threads():
    rng = np.random.default_rng(13)
    V = 777
    row = rng.normal(0, 2, size=V).astype(np.float32)
    seed = 0xDEADBEEFCAFEF00D
    params = dict(top_k=100, top_p=0.9, temperature=0.8)
    for step in (0, 5, 77):
        alone = sample_logits(row[None], seeds=[seed], step=step, **params)[0]
        for B in (2, 33, 200):
            for at in (0, B // 2, B - 1):
                logits = rng.normal(0, 2, size=(B, V)).astype(np.float32)
                seeds = rng.integers(0, 2**64, size=B, dtype=np.uint64)
                logits[at], seeds[at] = row, seed
                for threads in (1, 2, 0):
                    out = sample_logits(logits, seeds=seeds, step=step, num_threads=threads, **params)
                    assert out[at] == alone


def test_steps_and_seeds_give_different_streams():
    flat = np.zeros((512, 256), dtype=np.float32)
    seeds = np.arange(1, 513, dtype=np.uint64)
    s0 = sample_logits(flat, top_k=256, seeds=seeds, step=0)
    assert (sample_logits(flat, top_k=256, seeds=seeds, step=0) == s0).all()
    assert (sample_logits(flat, top_k=256, seeds=seeds, step=1) == s0).sum() < 10  # ~2 by chance
    assert (s0[1:] == s0[:-1]).sum() < 10


# ---------------------------------------------------------------------------------------------
# Errors: ValueError naming the value.

@pytest.mark.parametrize("params, message", [
    (dict(top_k=0), "top_k must be in [1, V=1024], got 0"),
    (dict(top_k=2000), "top_k must be in [1, V=1024], got 2000"),
    (dict(top_k=5, temperature=0.0), "temperature must be finite and > 0 (use greedy for argmax), got 0"),
    (dict(top_k=5, temperature=-1.0), "got -1"),
    (dict(top_k=5, top_p=0.0), "top_p must be in (0, 1], got 0"),
    (dict(top_k=5, top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (dict(top_k=5, top_p=float("nan")), "top_p must be in (0, 1], got nan"),
    (dict(top_k=5, num_threads=-2), "num_threads must be >= 0"),
])
def test_bad_parameters(params, message):
    with pytest.raises(ValueError) as e:
        sample_logits(np.zeros((4, 1024), np.float32), seeds=[1, 2, 3, 4], step=0, **params)
    assert message in str(e.value)


def test_bad_logits():
    x = np.zeros((4, 16), np.float32)
    x[3, 5] = np.nan
    with pytest.raises(ValueError, match="logits row 3 contains NaN"):
        sample_logits(x, top_k=2, seeds=[1, 2, 3, 4], step=0)
    with pytest.raises(ValueError, match="logits row 3 contains NaN"):
        sampling_probs(x, top_k=2)
    x[3, 5] = np.inf
    with pytest.raises(ValueError, match=r"logits row 3 contains \+inf"):
        sample_logits(x, top_k=2, seeds=[1, 2, 3, 4], step=0)
    x[3] = -np.inf
    with pytest.raises(ValueError, match="logits row 3 is all -inf"):
        sample_logits(x, top_k=2, seeds=[1, 2, 3, 4], step=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(logits=np.zeros((2, 8))), "logits must be float32, got float64"),
    (dict(logits=np.zeros(8, np.float32)), r"logits must be 2-D \[B, V\], got shape \(8,\)"),
    (dict(logits=np.zeros((0, 8), np.float32), seeds=np.zeros(0, np.uint64)), "batch must be >= 1, got 0"),
    (dict(seeds=[1, 2, 3]), r"seeds must have shape \(2,\) to match logits, got \(3,\)"),
    (dict(seeds=[1, -5]), "seeds must be >= 0, got -5"),
    (dict(seeds=[1.0, 2.0]), "seeds must be integers"),
    (dict(step=-1), "step must be in"),
])
def test_bad_arrays(kwargs, message):
    args = dict(logits=np.zeros((2, 8), np.float32), seeds=[1, 2], step=0, top_k=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample_logits(args.pop("logits"), **args)


def test_non_contiguous_logits_are_accepted():
    x = np.random.default_rng(2).normal(size=(16, 6)).astype(np.float32)
    seeds = np.arange(6, dtype=np.int64)  # non-negative int64 seeds are fine too
    assert (sample_logits(x.T, top_k=3, seeds=seeds, step=1)
            == sample_logits(np.ascontiguousarray(x.T), top_k=3, seeds=seeds, step=1)).all()


# ---------------------------------------------------------------------------------------------
# Every ISA the CPU has gives the generic kernels' tokens and probabilities (the ISA is fixed per
# process by VQRT_CPU_ISA, hence the subprocesses); runtime.sampling never imports torch.

_ISA_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vqrt import _native
    from vqrt.runtime.sampling import sample_logits, sampling_probs
    rng = np.random.default_rng(5)
    x = rng.normal(0, 3, size=(64, 3001)).astype(np.float32)
    x[::2] = np.round(x[::2] * 8) / 8
    seeds = np.arange(100, 164, dtype=np.uint64)
    result = {"isa": _native.cpu_isa(), "torch": "torch" in sys.modules, "cases": []}
    for p in (dict(top_k=50, top_p=0.9, temperature=0.8), dict(top_k=3001), dict(top_k=1)):
        result["cases"].append([sample_logits(x, seeds=seeds, step=3, **p).tolist(),
                                sampling_probs(x, **p).tobytes().hex()])
    print(json.dumps(result))
""")


def _run_with_isa(isa):
    env = dict(os.environ, VQRT_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def generic_results():
    return _run_with_isa("generic")


def test_generic_run_has_no_torch(generic_results):
    assert generic_results["isa"] == "generic"
    assert not generic_results["torch"]


@pytest.mark.parametrize("isa, needs", [("avx2", {"avx2", "fma"}),
                                        ("avx512", {"avx2", "fma", "avx512f"})])
def test_simd_variant_matches_generic(isa, needs, generic_results):
    flags = cpu_flags()
    if not needs <= flags:
        pytest.skip(f"this CPU lacks {isa} ({' '.join(sorted(needs - flags))} not in /proc/cpuinfo)")
    variant = _run_with_isa(isa)
    assert variant["isa"] == isa
    assert variant["cases"] == generic_results["cases"]


def test_invalid_isa_setting_is_an_error():
    env = dict(os.environ, VQRT_CPU_ISA="avx9")
    code = "from vqrt import _native\ntry:\n    _native.cpu_isa()\nexcept ValueError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "VQRT_CPU_ISA must be generic, avx2 or avx512, got 'avx9'" in out.stdout


def test_build_info():
    assert _native.cpu_isa() in ("generic", "avx2", "avx512")
    assert isinstance(_native.built_with_cuda(), bool)
    assert _native.cuda_device_count() >= 0
    if not _native.built_with_cuda():
        assert _native.cuda_device_count() == 0
