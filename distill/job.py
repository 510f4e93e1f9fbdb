"""A self-contained training-job folder: the run's config, the teacher's weights, the prompts, and its checkpoints.

The same folder is the trainer node's run folder, so either side resumes what the other wrote:
``OneStep Export Training Job`` writes it, ``torchrun ... -m <pack>.distill.cli JOB_DIR`` trains in it,
``OneStep Distill Trainer`` with the same run name continues it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .network_file import load_network, save_network
from .student_file import write_safetensors_atomic
from .training import DistillConfig

JOB_FILE = "job.json"
TEACHER_FILE = "teacher.safetensors"
PROMPTS_FILE = "prompts.safetensors"
LOSSES_FILE = "losses.jsonl"
STUDENT_FILE = "student.safetensors"


@dataclass
class Job:
    folder: Path
    config: DistillConfig
    teacher: torch.nn.Module
    conds: torch.Tensor
    uncond: torch.Tensor


def write_job(folder: Path, config: DistillConfig, teacher: torch.nn.Module, conds: torch.Tensor,
              uncond: torch.Tensor) -> Path:
    """Write job.json, the teacher (a pack network) and the prompts into ``folder``; checkpoints already there stay."""
    folder.mkdir(parents=True, exist_ok=True)
    save_network(folder / TEACHER_FILE, teacher)
    write_safetensors_atomic(folder / PROMPTS_FILE, {"conds": conds.cpu(), "uncond": uncond.cpu()}, {})
    temporary = folder / (JOB_FILE + ".tmp")
    temporary.write_text(json.dumps({"config": config.to_dict(), "teacher": TEACHER_FILE, "prompts": PROMPTS_FILE},
                                    indent=2))
    temporary.replace(folder / JOB_FILE)
    return folder


def read_job(folder: Path, device: torch.device) -> Job:
    """Load a job folder written by write_job; says which file is missing."""
    folder = Path(folder)
    if not (folder / JOB_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a OneStep training job: no {JOB_FILE} (export one with the "
                                "OneStep Export Training Job node)")
    description = json.loads((folder / JOB_FILE).read_text())
    prompts = load_file(str(folder / description["prompts"]))
    return Job(
        folder=folder,
        config=DistillConfig.from_dict(description["config"]),
        teacher=load_network(folder / description["teacher"], device),
        conds=prompts["conds"].to(device),
        uncond=prompts["uncond"].to(device),
    )
