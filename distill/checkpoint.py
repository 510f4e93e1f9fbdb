"""Checkpoints of a distillation run: crash-safe folders of safetensors plus one JSON manifest.

Layout of ``run_dir``::

    step_000100/            one complete checkpoint (a folder is the atomic unit)
        generator.safetensors, fake_score.safetensors, generator_ema.safetensors, ...
        optimizers.safetensors   every tensor of every optimizer state
        rng.safetensors          torch RNG states (ByteTensors)
        state.json               step, config, network signature, optimizer structure, python/numpy
                                 RNG states, extra counters, and the size + sha256 of every file
    latest                  name of the newest complete checkpoint folder

A checkpoint is written into ``step_000100.tmp-<pid>/`` (each file flushed and fsynced, the folder
fsynced), renamed into place, the parent fsynced, and only then is ``latest`` replaced atomically.
A crash at any point leaves the previous checkpoint and pointer intact. Loading checks sizes and
hashes before reading a byte of tensor data, and never unpickles anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
STATE_FILE = "state.json"
LATEST_FILE = "latest"
LOCK_FILE = ".lock"
OPTIMIZERS_FILE = "optimizers.safetensors"
RNG_FILE = "rng.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated or corrupt."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint written by a different config or network."""


class RunFolderLocked(CheckpointError):
    """Another process is writing this run folder."""


# --- one writer per run folder -----------------------------------------------------------------


@contextlib.contextmanager
def run_lock(run_dir: Path, owner: str = "") -> Iterator[Path]:
    """Hold ``run_dir/.lock`` exclusively while a run writes the folder; a second writer is refused with a message
    naming the holder (host, pid, since when). ``fcntl.flock`` locks belong to the open file, so the kernel releases
    the lock when the holder exits or is killed: a stale lock file never blocks a later run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that wrote no name"
            raise RunFolderLocked(f"{run_dir} is being written by another run ({holder}); wait for it to finish or "
                                  f"stop it, or choose another run name") from None
        description = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (description + (f", {owner}" if owner else "")).encode(), 0)
        try:
            yield run_dir / LOCK_FILE
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def checkpoint_config(path: Path) -> dict:
    """The config recorded in a checkpoint folder's manifest (refuses a missing or corrupt one)."""
    return _read_manifest(Path(path))["config"]


def config_difference(here: dict, recorded: dict, ignore: Iterable[str] = ()) -> str | None:
    """The first setting in which two run configs differ (ignoring ``ignore``), or None."""
    return _first_difference(here, recorded, ignore)


# --- durable file-system primitives ----------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


FILE_MODE = 0o644  # as ComfyUI's own outputs, whatever the server's umask


def write_durable(path: Path, data: bytes) -> None:
    """Write, flush and fsync a file in place (inside a folder that is not visible yet), mode 0644."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), FILE_MODE)
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, mode 0644: a uniquely named temp file in the same folder (several threads of a
    server may write at once), fsync, os.replace, fsync the folder; the temp file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write_durable(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --- tensors <-> JSON structure --------------------------------------------------------------


def _safetensors_ready(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no two sharing memory (safetensors refuses aliasing)."""
    ready, seen = {}, set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.numel() and tensor.data_ptr() in seen:
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.data_ptr())
        ready[key] = tensor
    return ready


def flatten_optimizer_state(name: str, state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into named tensors and a JSON structure referring to them."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {str(k): encode(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [encode(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, tuple):  # e.g. Adam's betas; JSON has no tuples
            return {"__tuple__": [encode(v, f"{key}.{i}") for i, v in enumerate(value)]}
        return value

    structure = {
        "state": {str(idx): encode(s, f"{name}.state.{idx}") for idx, s in state_dict["state"].items()},
        "param_groups": encode(state_dict["param_groups"], f"{name}.param_groups"),
    }
    return tensors, structure


def unflatten_optimizer_state(structure: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """Inverse of ``flatten_optimizer_state``."""

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if isinstance(value, dict) and "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return {
        "state": {int(idx): decode(s) for idx, s in structure["state"].items()},
        "param_groups": decode(structure["param_groups"]),
    }


# --- RNG states ------------------------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """torch (global CPU and the given generators) as tensors; python and numpy as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"torch_cuda.{i}": torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())}
    tensors |= {f"generator.{name}": g.get_state() for name, g in generators.items()}
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(tensors: dict[str, torch.Tensor], states: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back what ``capture_rng`` recorded."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_keys = sorted((k for k in tensors if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        for i, state in enumerate(cuda_states):
            torch.cuda.set_rng_state(state, i)
    for name, g in generators.items():
        g.set_state(tensors[f"generator.{name}"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- signatures ------------------------------------------------------------------------------


def network_signature(modules: dict[str, torch.nn.Module]) -> dict:
    """Name -> {parameter/buffer name: [shape, dtype]}: what a resumed run must match."""
    return {
        name: {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()}
        for name, module in modules.items()
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, path + ".")
        else:
            flat[path] = value
    return flat


def _first_difference(here: dict, there: dict, ignore: Iterable[str] = ()) -> str | None:
    ignore = set(ignore)
    here_flat, there_flat = _flatten(here), _flatten(there)
    for key in sorted(set(here_flat) | set(there_flat)):
        if key in ignore or key.split(".")[0] in ignore:
            continue
        if key not in there_flat:
            return f"'{key}' is missing in the checkpoint (here: {here_flat[key]!r})"
        if key not in here_flat:
            return f"'{key}' is in the checkpoint ({there_flat[key]!r}) but not here"
        if here_flat[key] != there_flat[key]:
            return f"'{key}' is {there_flat[key]!r} in the checkpoint, {here_flat[key]!r} here"
    return None


# --- save / load -----------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder named by ``latest``, or the highest step folder if the pointer is absent or stale."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST_FILE
    if pointer.is_file():
        target = run_dir / pointer.read_text().strip()
        if target.is_dir():
            return target
    folders = list_checkpoints(run_dir)
    return folders[-1] if folders else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, dict],
    config: dict,
    signature: dict,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write one checkpoint folder atomically and point ``latest`` at it; returns the folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    tmp = run_dir / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    files: dict[str, dict] = {}

    def put_tensors(filename: str, tensors: dict[str, torch.Tensor]) -> None:
        path = tmp / filename
        save_file(_safetensors_ready(tensors), str(path))
        os.chmod(path, FILE_MODE)
        fsync_file(path)
        files[filename] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}

    for name, state in weights.items():
        put_tensors(f"{name}.safetensors", state)
    optimizer_tensors, optimizer_structure = {}, {}
    for name, state in optimizers.items():
        tensors, optimizer_structure[name] = flatten_optimizer_state(name, state)
        optimizer_tensors |= tensors
    put_tensors(OPTIMIZERS_FILE, optimizer_tensors)
    rng_tensors, rng_states = capture_rng(generators or {})
    put_tensors(RNG_FILE, rng_tensors)

    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "config": config,
        "signature": signature,
        "weights": sorted(weights),
        "optimizers": optimizer_structure,
        "rng": rng_states,
        "extra": extra or {},
        "files": files,
    }
    write_durable(tmp / STATE_FILE, json.dumps(manifest, indent=1).encode())
    fsync_dir(tmp)

    if final.exists():  # re-saving a step: move the old folder aside first, a rename cannot overwrite it
        stale = run_dir / f"{final.name}.old-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    atomic_write_bytes(run_dir / LATEST_FILE, final.name.encode())

    if keep_last is not None:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                shutil.rmtree(old)
    return final


@dataclass
class LoadedCheckpoint:
    """Everything ``save_checkpoint`` wrote, verified and read back."""

    path: Path
    step: int
    config: dict
    weights: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict]
    rng_tensors: dict[str, torch.Tensor]
    rng_states: dict
    extra: dict = field(default_factory=dict)

    def restore_rng(self, generators: dict[str, torch.Generator] | None = None) -> None:
        restore_rng(self.rng_tensors, self.rng_states, generators or {})


def _refuse(path: Path, problem: str) -> CheckpointError:
    step = _step_of(path)
    older = [p for p in list_checkpoints(path.parent) if step is not None and _step_of(p) < step]
    hint = f"; the previous checkpoint {older[-1]} is untouched" if older else ""
    return CheckpointError(f"checkpoint {path} is unusable: {problem}{hint}")


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        raise _refuse(path, f"{STATE_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _refuse(path, f"{STATE_FILE} is truncated or corrupt ({e})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise _refuse(path, f"unknown format {manifest.get('format')!r}")
    return manifest


def _verified_tensors(path: Path, filename: str, expected: dict) -> dict[str, torch.Tensor]:
    file = path / filename
    if not file.is_file():
        raise _refuse(path, f"{filename} is missing")
    size = file.stat().st_size
    if size != expected["bytes"]:
        raise _refuse(path, f"{filename} is truncated or padded ({size} bytes, expected {expected['bytes']})")
    if sha256_of(file) != expected["sha256"]:
        raise _refuse(path, f"{filename} is corrupt (sha256 differs from the manifest)")
    return load_file(str(file), device="cpu")


def load_checkpoint(
    path: Path,
    config: dict | None = None,
    signature: dict | None = None,
    ignore_config_keys: Iterable[str] = (),
    config_defaults: dict | None = None,
) -> LoadedCheckpoint:
    """Read and verify a checkpoint folder; refuse it if its config or network signature differ.

    A config key missing from the checkpoint reads as its value in ``config_defaults``: a run saved before a
    setting existed ran as that setting's default does.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    recorded = (config_defaults or {}) | manifest["config"]
    if config is not None and (problem := _first_difference(config, recorded, ignore_config_keys)):
        raise CheckpointMismatch(f"checkpoint {path} comes from a different config: {problem}")
    if signature is not None and (problem := _first_difference(signature, manifest["signature"])):
        raise CheckpointMismatch(f"checkpoint {path} comes from a different network: {problem}")
    files = manifest["files"]
    weights = {
        name: _verified_tensors(path, f"{name}.safetensors", files[f"{name}.safetensors"])
        for name in manifest["weights"]
    }
    optimizer_tensors = _verified_tensors(path, OPTIMIZERS_FILE, files[OPTIMIZERS_FILE])
    optimizers = {
        name: unflatten_optimizer_state(structure, optimizer_tensors)
        for name, structure in manifest["optimizers"].items()
    }
    return LoadedCheckpoint(
        path=path,
        step=manifest["step"],
        config=manifest["config"],
        weights=weights,
        optimizers=optimizers,
        rng_tensors=_verified_tensors(path, RNG_FILE, files[RNG_FILE]),
        rng_states=manifest["rng"],
        extra=manifest["extra"],
    )
