"""A bundle's manifest as a card for people (`vqrt inspect BUNDLE`, `vqrt build`'s report)."""
from __future__ import annotations

from typing import List, Tuple

from vqrt.runtime.bundle import (
    Bundle, Conditioning, GraphSpec, ParityCheck, ParityReport, TensorSpec)


def format_value(check: ParityCheck) -> str:
    return "non-finite" if check.value is None else f"{check.value:.6g}"


def format_parity(report: ParityReport, title: str = "parity vs torch") -> str:
    """A ParityReport as lines: the build's parity report, or (title "int8 vs fp32 on held-out
    data") the int8 quality report, Manifest.quantization.quality."""
    lines = [f"{title} ({report.inputs}):"]
    for c in report.checks:
        limit = "" if c.limit is None else f" (limit {c.limit:g})"
        status = "ok" if c.passed else "FAIL"
        lines.append(f"  {c.graph:<20} {c.metric:<31} {format_value(c):<12} {status}{limit}")
    if not report.passed:
        lines.append("  built with --allow-drift despite the failures above"
                     if report.drift_allowed else "  FAILED")
    return "\n".join(lines)


def format_quality(report: ParityReport) -> str:
    return format_parity(report, "int8 vs fp32 on held-out data")


def _tensor(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype} [{', '.join(str(d) for d in spec.shape)}]"


def _graph_line(name: str, graph: GraphSpec) -> str:
    inputs = ", ".join(_tensor(t) for t in graph.inputs)
    outputs = ", ".join(_tensor(t) for t in graph.outputs)
    return f"    {name:<20} {graph.file} ({graph.precision}): {inputs} -> {outputs}"


def _conditioning(c: Conditioning) -> str:
    tokens = f"{c.prefix_tokens} prefix token{'s' if c.prefix_tokens != 1 else ''}"
    if c.kind == "class":
        return f"class-conditional, {c.n_classes} classes: token = class id ({tokens})"
    if c.kind == "unconditional":
        return f"unconditional: start token {c.sos_token} ({tokens})"
    if c.kind == "coord":
        return (f"coordinates, down factor {c.coord_down_factor}, tokens 0..{c.coord_n_embed} "
                f"({tokens})")
    resize = f", resized to {c.cond_resize}x{c.cond_resize}" if c.cond_resize else ""
    return (f"{c.cond_stage_key} ({c.cond_channels} channels{resize}) through the cond_encoder "
            f"graph ({tokens})")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} kB"


def format_bundle(bundle: Bundle) -> str:
    m = bundle.manifest
    fs = m.first_stage
    f = fs.downsampling_factor
    max_h, max_w = m.limits.max_latent
    rows: List[Tuple[str, str]] = [
        ("model", f"{m.model_card.get('target', m.kind)} ({m.kind})"),
        ("built", f"{m.created} with vqrt {m.tools.get('vqrt', '?')}, precision "
                  f"{m.requested_precision}"),
        ("backends", ", ".join(m.backends)),
        ("image", f"{fs.training_size[1]} x {fs.training_size[0]} at training, "
                  f"{fs.image_channels} channels, values in [{fs.value_range[0]:g}, "
                  f"{fs.value_range[1]:g}]"),
        ("latent grid", f"{fs.training_grid[0]} x {fs.training_grid[1]}, downsampling factor "
                        f"f = {f}"),
        ("codebook", f"{fs.codebook_size:,} codes x {fs.codebook_dim} dims ({fs.quantizer})"),
    ]
    if m.transformer is not None:
        t = m.transformer
        rows.append(("transformer", f"{t.n_layer} layers, {t.n_head} heads x {t.head_dim} dims "
                                    f"({t.n_embd} wide), vocabulary {t.vocab_size:,}, block "
                                    f"size {t.block_size}"))
    if m.conditioning is not None:
        rows.append(("conditioning", _conditioning(m.conditioning)))
    if m.tokenization is not None:
        rows.append(("sequence", f"[{', '.join(m.tokenization.layout)}], image tokens in "
                                 f"{m.tokenization.order} order, prefix rule "
                                 f"{m.tokenization.prefix}"))
    sequence = (f", sequence <= {m.limits.max_sequence}" if m.limits.max_sequence else "")
    rows.append(("limits", f"batch <= {m.limits.max_batch}, latent <= {max_h} x {max_w} "
                           f"({max_w * f} x {max_h * f} pixels){sequence}"))
    if m.kv_cache is not None:
        shape = ", ".join(str(d) for d in m.kv_cache.shape)
        rows.append(("KV cache", f"{m.kv_cache.dtype} [{shape}], {m.kv_cache.input} -> "
                                 f"{m.kv_cache.output} (one buffer, updated in place)"))
    if m.native is not None:
        rows.append(("native", f"{m.native.file} ({m.native.precision}, {m.native.layout})"))
    if m.tensorrt is not None:
        trt = m.tensorrt
        rows.append(("tensorrt", f"TensorRT {trt.version} on {trt.gpu} (compute capability "
                                 f"{trt.compute_capability}): "
                                 f"{', '.join(e.file for e in trt.engines.values())}"))
    total = sum(entry.size for entry in m.files)
    rows.append(("files", f"{len(m.files)} files, {_size(total)}, sizes and SHA-256 checked"))
    lines = [f"bundle: {bundle.path} (schema {m.schema_version})"]
    lines += [f"  {label:<14} {text}" for label, text in rows]
    lines.append("  graphs")
    lines += [_graph_line(name, graph) for name, graph in m.graphs.items()]
    lines += ["  " + line for line in format_parity(m.parity).splitlines()]
    if m.quantization is not None:
        lines += ["  " + line for line in format_quality(m.quantization.quality).splitlines()]
    if m.notes:
        lines.append("  notes")
        lines += [f"    - {note}" for note in m.notes]
    return "\n".join(lines)
