"""Fuzzes the Python readers of untrusted bundle bytes: safetensors, strict JSON, the manifest.

    python tests/fuzz_readers.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET: safetensors (runtime.safetensors_io.parse_safetensors), json (strict_json.loads_strict)
or manifest (bundle.parse_manifest, after strict JSON: the schema and value checks). Each input
must either parse or raise the reader's own error type (a ValueError with one line); any other
exception, or an error message with a line break, is a crash. With atheris installed (the
`test` extra on Linux x86-64, CPython >= 3.11) it is coverage-guided libFuzzer, bounded by
`-runs=N` / `-max_total_time=S`; without it, the same targets run over seeded random mutations
of the corpus (`-runs=N -seed=S` are honoured), so the check runs everywhere.
tests/test_reliability_fuzz.py runs each target for a bounded number of inputs; a crash it
finds becomes a case in tests/test_reliability_files.py.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

try:
    import atheris
except ImportError:  # the fallback below needs nothing
    atheris = None


def _load_readers():
    # Imported here so that atheris can instrument them for coverage.
    from vqrt.runtime import bundle, safetensors_io, strict_json
    return bundle, safetensors_io, strict_json


if atheris is not None:
    import numpy  # noqa: F401  (imported first: only vqrt's own modules are instrumented)
    with atheris.instrument_imports(include=["vqrt"]):
        bundle, safetensors_io, strict_json = _load_readers()
else:
    bundle, safetensors_io, strict_json = _load_readers()


def _one_line(error: Exception) -> None:
    if "\n" in str(error):
        raise AssertionError(f"error message spans lines: {str(error)!r}")


def check_safetensors(data: bytes) -> None:
    try:
        arrays, infos, metadata = safetensors_io.parse_safetensors(data, "fuzz.safetensors")
    except safetensors_io.SafetensorsError as e:
        _one_line(e)
        return
    for name, array in arrays.items():  # what was accepted is what the header said
        assert array.shape == infos[name].shape, name
    assert all(isinstance(v, str) for v in metadata.values())


def check_json(data: bytes) -> None:
    try:
        strict_json.loads_strict(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _one_line(e)


def check_manifest(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_bundle reports that before parse_manifest
    try:
        bundle.parse_manifest(text)
    except bundle.BundleError as e:
        _one_line(e)


TARGETS = {"safetensors": check_safetensors, "json": check_json, "manifest": check_manifest}


def seed_inputs(target: str) -> list:
    """Small valid inputs for each target, the fuzzer's starting points."""
    import json
    import numpy as np
    if target == "safetensors":
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "seed.safetensors"
            safetensors_io.write_safetensors(path, {
                "a": np.arange(6, dtype=np.float32).reshape(2, 3),
                "b": np.array([1, -2, 3], dtype=np.int8),
                "c": safetensors_io.Bf16(np.array([0x3F80, 0x4000], dtype=np.uint16))},
                metadata={"layout": "vqrt-native-1"})
            return [path.read_bytes()]
    if target == "json":
        return [b'{"a": [1, 2.5, -3e2, true, null, "\\u00e9"], "b": {"c": []}}', b"[[[]]]"]
    return [json.dumps(small_manifest()).encode()]


def small_manifest() -> dict:
    """A manifest that parses: a class-conditional net2net bundle with native weights."""
    return {
        "schema_version": bundle.SCHEMA_VERSION, "created": "2025-01-01T00:00:00Z",
        "kind": "net2net", "requested_precision": "fp32", "backends": ["native"],
        "model_card": {},
        "first_stage": {"image_channels": 3, "training_size": [32, 32],
                        "downsampling_factor": 8, "training_grid": [4, 4],
                        "codebook_size": 50, "codebook_dim": 8, "quantizer": "vq",
                        "value_range": [-1.0, 1.0]},
        "transformer": {"vocab_size": 61, "block_size": 40, "n_layer": 2, "n_head": 4,
                        "n_embd": 48, "head_dim": 12, "n_unmasked": 0},
        "tokenization": {"order": "raster", "layout": ["cond", "image"], "prefix": "class_id"},
        "conditioning": {"kind": "class", "prefix_tokens": 1, "n_classes": 5},
        "limits": {"max_batch": 4, "max_latent": [5, 5], "max_sequence": 40},
        "graphs": {}, "kv_cache": None,
        "native": {"file": "w.safetensors", "precision": "fp32", "layout": "vqrt-native-1"},
        "tensorrt": None,
        **{field: None for field in _optional_sections()},
        "files": [{"path": "w.safetensors", "sha256": "0" * 64, "size": 1}],
        "tools": {}, "parity": {"inputs": "", "checks": [], "passed": True,
                                "drift_allowed": False},
        "notes": [],
    }


def _optional_sections() -> list:
    """Manifest fields this vqrt has beyond the ones small_manifest spells out (newer optional
    sections default to null), so the seed parses as the schema grows."""
    import dataclasses
    spelled = {"schema_version", "created", "kind", "requested_precision", "backends",
               "model_card", "first_stage", "transformer", "tokenization", "conditioning",
               "limits", "graphs", "kv_cache", "native", "tensorrt", "files", "tools", "parity",
               "notes"}
    return [f.name for f in dataclasses.fields(bundle.Manifest) if f.name not in spelled]


# --- the fallback: seeded mutations ------------------------------------------------------------

_INTERESTING = [b"0", b"-1", b"1e999", b"18446744073709551616", b"9223372036854775807",
                b"null", b"[]", b"{}", b'"', b"\\", b"\x00", b"\xff", b"[" * 80, b"NaN",
                b"4294967296", b"\"..\"", b"\"/etc/passwd\""]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four edits: flip bits, overwrite, insert, delete or duplicate a span, or splice in
    a value a parser finds hard."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            at = min(at, len(out) - 1)
            out[at] = rng.randrange(256)
        elif kind == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and out:
            del out[at:at + rng.randint(1, 16)]
        elif kind == 4 and out:
            span = out[at:at + rng.randint(1, 32)]
            out[at:at] = span
        else:
            out[at:at] = rng.choice(_INTERESTING)
    return bytes(out)


def fallback(check, seeds: list, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    for data in seeds:
        check(data)
    for i in range(runs):
        data = mutate(rng.choice(seeds), rng)
        try:
            check(data)
        except Exception:
            print(f"crash on input {i} (seed {seed}): {data[:200]!r}", file=sys.stderr)
            raise


def main(argv: list) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [CORPUS ...]")
    target = argv[1]
    check = TARGETS[target]
    options = [a for a in argv[2:] if a.startswith("-")]
    corpora = [Path(a) for a in argv[2:] if not a.startswith("-")]
    if atheris is not None:
        for folder in corpora:  # libFuzzer reads its starting points from the corpus folders
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(seed_inputs(target)):
                (folder / f"seed-{i}").write_bytes(data)
        atheris.Setup([argv[0]] + options + [str(c) for c in corpora], check)
        atheris.Fuzz()
        return
    values = dict(a[1:].split("=", 1) for a in options if "=" in a)
    fallback(check, seed_inputs(target), int(values.get("runs", 1000)),
             int(values.get("seed", 0)))


if __name__ == "__main__":
    main(sys.argv)
