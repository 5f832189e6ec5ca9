"""What both training stages share: processes, randomness, the run folder, checkpoints, logs.

Run folder (RUN/):
  train.json            the run's settings (what --resume continues with)
  config.json,          the latest weights as a vqrt checkpoint, so RUN/ itself loads with
  model.safetensors     load_checkpoint, `vqrt inspect RUN/` and `--first-stage RUN/`
  checkpoints/step_N/   model.safetensors + config.json (the model), state.safetensors
                        (optimizer.<name>.<param index>.<field>: optimizer tensors;
                        module.<name>.<key>: training-only modules such as the
                        discriminator) and state.json (step, seed, optimizer param groups)
  metrics.jsonl         one JSON object per logged step or validation
  samples/step_N.png    reconstruction or sample grids
Every file is written to a temporary name, fsynced and renamed into place; a checkpoint folder
is renamed into place whole and hidden (renamed) before it is deleted, so an interrupted run
(Ctrl-C, a kill, a full disk) never leaves a visible step_N that is half-written or half-
deleted: --resume reads the newest complete one. Nothing is pickled.

Randomness: every random draw of step s on process r comes from generators seeded with
(seed, s, r) (see `seed_step`), and the data order from (seed, epoch). The RNG state of a run is
therefore its seed and step, both in state.json, and a resumed run continues exactly.

Processes: under torchrun (WORLD_SIZE > 1) each process joins a process group (NCCL on GPU,
gloo on CPU); rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

SETTINGS_FILE = "train.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


class TrainingError(ValueError):
    """A training request that cannot run; one line for the user."""


# --- processes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def start_processes(device: str) -> Processes:
    """device: auto, cpu or cuda. Joins torchrun's process group when WORLD_SIZE > 1."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Processes(rank, world_size, target)


def stop_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(module: nn.Module, processes: Processes) -> nn.Module:
    """module wrapped in DistributedDataParallel when there are several processes."""
    if processes.world_size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


PRECISIONS = ("fp32", "bf16")


def mixed_precision(precision: str, device: torch.device):
    """Context for a training step's forward passes. fp32: nothing changes. bf16: torch autocast
    runs matmuls and convolutions in bfloat16; weights, gradients, Adam's state, norms and
    reductions stay fp32, so no loss scaling is needed (bf16 has fp32's exponent range).
    Held-out numbers are always measured in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), as oneDNN sees it.
    Without it autocast emulates bf16 through fp32 conversions and runs slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise TrainingError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--precision bf16: this GPU has no bfloat16 arithmetic (it came "
                            "before Ampere); train with --precision fp32")
    # On an AVX2-only EPYC the demo VQGAN took 17 s a step in bf16 against 0.7 s in fp32.
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise TrainingError("--precision bf16: this CPU has no native bfloat16 arithmetic "
                            "(AVX512-BF16 or AMX), so it would run far slower than fp32; "
                            "train with --precision fp32")


# --- randomness ---------------------------------------------------------------------------

def seed_step(seed: int, step: int, rank: int) -> torch.Generator:
    """Seeds torch's global generators (dropout, pkeep, on CPU and CUDA) for one step of one
    process and returns a CPU generator for the step's data draws (crops, flips)."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    value = int.from_bytes(digest[:8], "big") >> 1  # manual_seed takes < 2**63
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value ^ 0x5DEECE66D)


# --- learning rate ------------------------------------------------------------------------

def warmup_cosine(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over warmup_steps to `peak`, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- files --------------------------------------------------------------------------------

def write_atomically(path: Path, data: bytes) -> None:
    """path holds its old content or all of data, even across a crash or power loss: a
    temporary file, fsynced, renamed over it. On an error (a full disk) the temporary goes."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def fsync_tree(directory: Path) -> None:
    """Flushes every file under directory, and the directories themselves, to the disk (a
    rename is atomic, but without this a power loss can leave the renamed files empty)."""
    for folder, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(Path(folder))


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json(path: Path, document: Any) -> None:
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def settings_to_json(settings) -> Dict[str, Any]:
    """A settings dataclass as JSON (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(settings).items()}


def merge_settings(cls, stored: Optional[Mapping[str, Any]], given: Mapping[str, Any],
                   may_change: Tuple[str, ...], run: Path):
    """Settings of a new run (stored None) or a resumed one. given: the command line's
    values (None = not given). A resumed run keeps its stored settings; the command line may
    only change the fields in may_change (say, more steps) and must repeat the others."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(given) - fields
    assert not unknown, unknown
    values: Dict[str, Any] = dict(stored or {})
    for name, value in given.items():
        if value is None:
            continue
        value = str(value) if isinstance(value, Path) else value
        if stored is not None and name not in may_change and stored.get(name) != value:
            raise TrainingError(f"{run / SETTINGS_FILE}: the run was started with {name}="
                                f"{stored.get(name)!r}; --resume cannot change it to {value!r}")
        values[name] = value
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING]
    if missing:
        options = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise TrainingError(f"missing setting(s): {options}")
    return cls(**{k: v for k, v in values.items() if k in fields})


def require_positive(settings, names: Tuple[str, ...]) -> None:
    for name in names:
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise TrainingError(f"--{name.replace('_', '-')} must be positive, got {value}")


def read_settings(run: Path) -> Dict[str, Any]:
    path = run / SETTINGS_FILE
    if not path.is_file():
        raise TrainingError(f"{run}: no {SETTINGS_FILE}; not a vqrt training run")
    return json.loads(path.read_text(encoding="utf-8"))


def prepare_run(run: Path, resume: bool, stage: str) -> Optional[Dict[str, Any]]:
    """Checks the run folder for a new or resumed run; -> the stored settings when resuming."""
    if resume:
        stored = read_settings(run)
        if stored.get("stage") != stage:
            raise TrainingError(f"{run}: a {stored.get('stage')} run, not a {stage} run")
        return stored
    if (run / SETTINGS_FILE).exists() or (run / CHECKPOINTS_DIR).exists():
        raise TrainingError(f"{run}: already holds a training run; pass --resume to continue "
                            "it or choose another --out")
    return None



# Settings a resumed run may change; any other difference from the stored run is an error.
RESUMABLE_CHANGES = ("out", "steps", "checkpoint_every", "sample_every", "log_every",
                     "keep_checkpoints", "device", "precision", "lr_decay_from")


@contextmanager
def open_run(given: Mapping[str, Any], resume: bool, stage: str, settings_type,
             positive: Tuple[str, ...]) -> Iterator[Tuple[Path, Any, "Processes"]]:
    """Both stages' start: checks RUN/, starts the processes (torchrun or one), merges the given
    settings with a resumed run's, checks that `positive` ones are > 0, and stops the processes
    on the way out. Yields (run folder, settings, processes)."""
    run = Path(given["out"])
    stored = prepare_run(run, resume, stage)
    processes = start_processes(given.get("device") or (stored or {}).get("device", "auto"))
    try:
        processes.barrier()  # every process has checked RUN/ before any writes to it
        given = dict(given, world_size=processes.world_size)
        settings = merge_settings(settings_type, stored, given, RESUMABLE_CHANGES, run)
        require_positive(settings, positive)
        check_precision(settings.precision, processes.device)
        yield run, settings, processes
    finally:
        stop_processes()

# --- optimizer state as safetensors + JSON -------------------------------------------------

def optimizer_state(name: str, optimizer: torch.optim.Optimizer
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """-> (tensors keyed <name>.<param index>.<field>, JSON: param_groups and scalar fields)."""
    state = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for index, fields in state["state"].items():
        for field, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{index}.{field}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[field] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(name: str, optimizer: torch.optim.Optimizer,
                         tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any]
                         ) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    prefix = name + "."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    for index, fields in document["scalars"].items():
        state.setdefault(int(index), {}).update(fields)
    optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})


# --- checkpoints --------------------------------------------------------------------------

@dataclass
class TrainingState:
    """What a checkpoint holds besides the model: optimizers and training-only modules
    (the discriminator; anything with state_dict / load_state_dict of tensors), by name."""
    optimizers: Dict[str, torch.optim.Optimizer]
    modules: Dict[str, Any]


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / CHECKPOINTS_DIR / f"step_{step:07d}"


def latest_checkpoint(run: Path) -> Optional[Path]:
    found = sorted((run / CHECKPOINTS_DIR).glob("step_*")) if (run / CHECKPOINTS_DIR).is_dir() \
        else []
    return found[-1] if found else None


def save_training_checkpoint(run: Path, step: int, seed: int, model: nn.Module,
                             model_config: Mapping[str, Any], state: TrainingState,
                             keep: int) -> Path:
    """Writes checkpoints/step_<step>/ whole (renamed into place), refreshes RUN/'s
    model.safetensors and config.json, and removes all but the newest `keep` checkpoints."""
    from safetensors.torch import save_file
    from vqrt.trainer.checkpoints import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
    final = checkpoint_dir(run, step)
    temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save_checkpoint(temporary, model, model_config)
        tensors: Dict[str, torch.Tensor] = {}
        optimizers: Dict[str, Any] = {}
        for name, optimizer in state.optimizers.items():
            optimizer_tensors, optimizers[name] = optimizer_state(f"optimizer.{name}", optimizer)
            tensors.update(optimizer_tensors)
        for name, module in state.modules.items():
            for key, value in module.state_dict().items():
                tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(temporary / STATE_TENSORS))
        write_json(temporary / STATE_JSON, {"step": step, "seed": seed, "optimizers": optimizers})
        fsync_tree(temporary)
    except BaseException:  # a full disk, Ctrl-C: no half-written folder is left to fill it
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        remove_checkpoint(final)
    os.replace(temporary, final)
    fsync_directory(final.parent)  # the rename itself
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        write_atomically(run / name, (final / name).read_bytes())
    for old in sorted((run / CHECKPOINTS_DIR).glob("step_*"))[:-keep]:
        remove_checkpoint(old)
    return final


def remove_checkpoint(folder: Path) -> None:
    """Hides the folder first (one rename), then deletes it: an interrupted deletion leaves a
    hidden folder, never a visible step_N with files missing that a resume would pick."""
    hidden = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(folder, hidden)
    try:
        shutil.rmtree(hidden)
    except BaseException:  # Ctrl-C mid-deletion: finish it, then stop
        shutil.rmtree(hidden, ignore_errors=True)
        raise


def load_training_checkpoint(directory: Path, model: nn.Module, state: TrainingState) -> int:
    """Restores model weights, optimizers and training-only modules; -> the step to continue
    from."""
    from safetensors.torch import load_file
    from vqrt.trainer.checkpoints import load_checkpoint
    loaded = load_checkpoint(directory)
    model.load_state_dict(loaded.model.state_dict())
    tensors = load_file(str(directory / STATE_TENSORS))
    document = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    for name, optimizer in state.optimizers.items():
        load_optimizer_state(f"optimizer.{name}", optimizer, tensors,
                             document["optimizers"][name])
    for name, module in state.modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                if k.startswith(prefix)})
    return int(document["step"])


# --- logs and pictures --------------------------------------------------------------------

def _record_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a torn line, so that it is dropped."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (main process only).

    start: the step the run (re)starts from. Records of later steps, written by a run stopped
    after its last checkpoint, are dropped (and a line torn by a kill mid-write), so the file
    of a resumed run reads as one run's."""

    def __init__(self, run: Path, enabled: bool, start: int = 0):
        self.path = run / METRICS_FILE
        self.enabled = enabled
        if enabled and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if _record_step(line) <= start]
            if len(kept) < len(lines):
                write_atomically(self.path, "".join(kept).encode("utf-8"))

    def write(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(dict(record)) + "\n")


class RunningMeans:
    """Means of each logged quantity over the steps since the last `pop` (a single step's
    loss is too noisy to read)."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> Dict[str, float]:
        means = {k: round(self.sums[k] / self.counts[k], 6) for k in self.sums}
        self.sums, self.counts = {}, {}
        return means


class StepTimer:
    """Steps per second over the steps since the last call."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.steps / max(now - self.start, 1e-9)
        self.start, self.steps = now, 0
        return rate


def progress_bar(start: int, total: int, enabled: bool, description: str):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc=description,
                unit="step", dynamic_ncols=True)


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """images (N, 3, H, W) in [-1, 1] -> one PNG, `columns` images per row."""
    from PIL import Image
    n, _, height, width = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.zeros(3, rows * height, columns * width, dtype=torch.uint8)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for i in range(n):
        row, column = divmod(i, columns)
        canvas[:, row * height:(row + 1) * height, column * width:(column + 1) * width] = \
            pixels[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def samples_path(run: Path, step: int) -> Path:
    return run / SAMPLES_DIR / f"step_{step:07d}.png"


def average_across_processes(values: List[float], processes: Processes) -> List[float]:
    """Element-wise mean over processes (for validation metrics)."""
    if processes.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(tensor)
    return (tensor / processes.world_size).tolist()
