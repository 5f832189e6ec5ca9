"""The CPU benchmark suite behind BENCHMARKS.md: random S and M models in upstream format, their
bundles, one `vqrt bench --baselines` run per model, and the BENCHMARKS.md section made from
the JSON (tables, plots, issue 5's targets).

    .venv/bin/python benchmarks/bench_suite.py all            # models, run, report
    .venv/bin/python benchmarks/bench_suite.py models         # checkpoints + bundles only
    .venv/bin/python benchmarks/bench_suite.py run --models S --repeat 1 --warmup 0
    .venv/bin/python benchmarks/bench_suite.py report         # BENCHMARKS.md from the JSON

Models (class-conditional ImageNet shape: 1 class token, then a 16 x 16 grid; block 257):
  S  GPT 12 layers, 12 heads, 768 wide     M  GPT 24 layers, 16 heads, 1024 wide
both with vocabulary 1024 and upstream's ImageNet VQGAN (configs/imagenet_vqgan.yaml: ch 128,
ch_mult [1, 1, 2, 2, 4], 2 res blocks, attention at 16, z 256, embed 256, 1024 codes, 256 px).
Weights are random: N(0, 1/fan_in) for the GPT's matrices (head x3, so logits spread over
several units as a trained model's do), codebook N(0, 1), torch's default init elsewhere.
Speed does not depend on the values. Each model gets three bundles: fp32 (native weights and
ONNX graphs), bf16 and int8 (native weights), measured together in one run.

Checkpoints and bundles go to --work (default build/bench, ignored by git); the JSON and plots
to benchmarks/results/, which BENCHMARKS.md links.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results")  # relative to ROOT, where every command runs
DEFAULT_WORK = Path("build/bench")  # relative to ROOT; git ignores build/
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BEGIN = "<!-- bench_suite.py: begin (generated from benchmarks/results/*.json; edits here are lost) -->"
END = "<!-- bench_suite.py: end -->"

GPTS = {"S": {"n_layer": 12, "n_head": 12, "n_embd": 768},
        "M": {"n_layer": 24, "n_head": 16, "n_embd": 1024}}
PRECISIONS = {"fp32": "auto", "bf16": "native", "int8": "native"}  # precision -> --backend
IMAGENET_VQGAN = {  # taming-transformers configs/imagenet_vqgan.yaml, model.params
    "embed_dim": 256, "n_embed": 1024,
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3,
                 "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                 "attn_resolutions": [16], "dropout": 0.0},
    "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}


def model_config(name: str) -> Dict:
    """The upstream `model:` section of model `name`."""
    return {
        "base_learning_rate": 4.5e-06,
        "target": "taming.models.cond_transformer.Net2NetTransformer",
        "params": {
            "first_stage_key": "image", "cond_stage_key": "class_label",
            "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                                   "params": {"vocab_size": 1024, "block_size": 257,
                                              **GPTS[name]}},
            "first_stage_config": {"target": "taming.models.vqgan.VQModel",
                                   "params": IMAGENET_VQGAN},
            "cond_stage_config": {"target": "taming.modules.util.Labelator",
                                  "params": {"n_classes": 1000}}}}


def make_checkpoint(name: str, directory: Path) -> Path:
    """directory/model.ckpt ({"state_dict": ...}, as Lightning saves it) + model.yaml."""
    import torch
    import yaml
    from vqrt.trainer.model_config import parse_model_config
    from vqrt.trainer.models.net2net import Net2NetTransformer
    config = model_config(name)
    torch.manual_seed(0)
    model = Net2NetTransformer(parse_model_config(config).config).eval()
    with torch.no_grad():
        for key, p in model.transformer.named_parameters():
            if key.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, (3.0 if key == "head.weight" else 1.0) / math.sqrt(p.shape[1]))
        model.first_stage_model.quantize.embedding.weight.normal_()
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, directory / "model.ckpt")
    (directory / "model.yaml").write_text(yaml.safe_dump({"model": config}, sort_keys=False))
    return directory / "model.ckpt"


def _vqrt(*args: str) -> None:
    command = [sys.executable, "-m", "vqrt", *args]
    print("$ vqrt " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def bundles_of(work: Path, name: str) -> List[Path]:
    return [work / name / f"bundle-{p}" for p in PRECISIONS]


def make_models(work: Path, names: List[str], max_batch: int) -> None:
    for name in names:
        started = time.perf_counter()
        ckpt = make_checkpoint(name, ROOT / work / name)
        for precision, backend in PRECISIONS.items():
            _vqrt("build", str(ckpt), "--config", str(work / name / "model.yaml"), "-o",
                  str(work / name / f"bundle-{precision}"), "--precision", precision,
                  "--backend", backend, "--max-batch", str(max_batch), "--force")
        print(f"{name}: checkpoint and bundles in {time.perf_counter() - started:.0f} s")


def bench_command(work: Path, name: str, batches: str, repeat: int, warmup: int,
                  tokens: Optional[int] = None) -> List[str]:
    """The `vqrt bench` arguments of one model, run from ROOT (also printed into
    BENCHMARKS.md). tokens: None = the whole grid."""
    return ["bench", *map(str, bundles_of(work, name)), "--baselines", "--checkpoint",
            str(work / name / "model.ckpt"), "--config", str(work / name / "model.yaml"),
            "--batch", batches, "--repeat", str(repeat), "--warmup", str(warmup),
            *(["--tokens", str(tokens)] if tokens else []),
            "--json", str(RESULTS / f"{name}.json"), "--plot", str(RESULTS / f"{name}.png")]


def run_models(work: Path, names: List[str], batches: str, repeat: int, warmup: int,
               tokens: Optional[int]) -> None:
    (ROOT / RESULTS).mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        _vqrt(*bench_command(work, name, batches, repeat, warmup, tokens))
        print(f"{name}: vqrt bench took {time.perf_counter() - started:.0f} s")


# --- BENCHMARKS.md ----------------------------------------------------------------------------

# Issue 5's targets for the native backend: (precision, batch, x upstream, peers, x best peer).
TARGETS = (("bf16", 1, 5.0, ("vqrt onnxruntime fp32", "torch static-cache bf16"), 1.6),
           ("int8", 1, 9.0, ("onnxruntime int8 (dynamic)",), 1.3),
           ("bf16", 8, 8.0, ("vqrt onnxruntime fp32", "torch static-cache bf16",
                             "onnxruntime int8 (dynamic)"), 2.0))


def _rate(doc: Dict, name: str, batch: int) -> Optional[float]:
    for e in doc["results"]:
        if e["name"] == name and e["batch"] == batch and "tokens_per_s" in e:
            return e["tokens_per_s"]["median"]
    return None


def targets_table(doc: Dict) -> str:
    lines = ["| native | batch | tokens/s | x upstream (target) | best peer | x best peer (target) |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for precision, batch, want_up, peers, want_peer in TARGETS:
        ours = _rate(doc, f"vqrt native {precision}", batch)
        upstream = _rate(doc, "torch upstream fp32", batch)
        rates = {p: _rate(doc, p, batch) for p in peers}
        rates = {p: r for p, r in rates.items() if r is not None}
        if ours is None or upstream is None or not rates:
            lines.append(f"| {precision} | {batch} | not measured in this run | | | |")
            continue
        best = max(rates, key=rates.get)
        lines.append(f"| {precision} | {batch} | {ours:.1f} | {ours / upstream:.2f}x "
                     f"(>= {want_up:g}x) | {best} {rates[best]:.1f} | "
                     f"{ours / rates[best]:.2f}x (>= {want_peer:g}x) |")
    return "\n".join(lines)


def model_section(name: str, doc: Dict) -> str:
    from vqrt.bench import report
    s = doc["settings"]
    h, w = doc["model"]["grid"]
    command = " ".join(bench_command(DEFAULT_WORK, name, ",".join(map(str, s["batches"])),
                                     s["repeat"], s["warmup"],
                                     s["tokens"] if s["tokens"] < h * w else None))
    workload, machine = report.describe(doc)
    return "\n\n".join([
        f"### {name}: {workload.split(';')[0]}",
        f"{doc['created']}; {machine}. {workload.split('; ', 1)[1]}.",
        report.format_markdown(doc),
        "Issue 5's targets for the native backend, from the same run:",
        targets_table(doc),
        f"![{name}: tokens/s against batch, latency per stage](benchmarks/results/{name}.png)",
        "Notes: " + " ".join(f"{n}." for n in doc["notes"]),
        f"Reproduce: `.venv/bin/python benchmarks/bench_suite.py models --models {name}`, then "
        f"`.venv/bin/vqrt {command}`."])


def write_report(names: List[str]) -> None:
    sections = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if (ROOT / path).exists():
            sections.append(model_section(name, json.loads((ROOT / path).read_text())))
        else:
            sections.append(f"### {name}\n\nNot yet measured (no {path}).")
    body = "\n\n".join([
        "## `vqrt bench`: S and M on the CPU",
        "Columns: prefill = the prefix through the model (time to the first token's logits); "
        "token ms = one sampled token per row plus its step, pooled over repeats; tokens/s = "
        "B x tokens over prefill + all steps, median of the repeats, spread = half the min-max "
        "range; x upstream = tokens/s over taming's sample_with_past-style torch sampler in the "
        "same run; x bound = median per-token latency over the time to read the weight matrices "
        "and the attended KV cache once at the read bandwidth measured in the same run (1.0 = "
        "at the memory roofline); peak MB = the process's peak resident memory during the run "
        "(every contender's weights are resident at once).",
        *sections,
        "GPU figures: not yet measured (no session has had a GPU; the CUDA kernels are issue 7)."])
    text = BENCHMARKS_MD.read_text()
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
    print(f"wrote the generated section of {BENCHMARKS_MD.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("models", "run", "report", "all"))
    parser.add_argument("--models", default="S,M", help="comma-separated: S, M (default both)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="checkpoints and bundles, relative to the repository root "
                             f"(default {DEFAULT_WORK})")
    parser.add_argument("--batch", default="1,8", help="vqrt bench --batch (default 1,8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tokens", type=int, help="vqrt bench --tokens (default: the grid)")
    args = parser.parse_args()
    names = [n.strip().upper() for n in args.models.split(",")]
    unknown = [n for n in names if n not in GPTS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: choose from S, M")
    max_batch = max(int(b) for b in args.batch.split(","))
    if args.stage in ("models", "all"):
        make_models(args.work, names, max_batch)
    if args.stage in ("run", "all"):
        run_models(args.work, names, args.batch, args.repeat, args.warmup, args.tokens)
    if args.stage in ("report", "all"):
        write_report(names)


if __name__ == "__main__":
    main()
