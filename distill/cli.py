"""Train a exported job on one or several processes: ``torchrun --nproc_per_node N -m <pack>.distill.cli JOB_DIR``.

Each process holds the three networks; DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on
CPUs). With ``--fsdp`` the generator and fake score are sharded instead (FSDP2 ``fully_shard``; works with gloo on
CPUs too). ``config.batch_size`` is the batch of each process. Rank 0 writes the checkpoints, ``losses.jsonl``
and, at the end, ``student.safetensors`` (the EMA generator, which OneStep Load Pack Model reads).
"""

import argparse
import contextlib
import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import latest_checkpoint, run_lock
from .job import LOSSES_FILE, STUDENT_FILE, read_job
from .lora import has_lora, merged_copy
from .network_file import save_network
from .training import Distiller


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job_dir", type=Path, help="a folder written by OneStep Export Training Job")
    parser.add_argument("--log-every", type=int, default=10, help="print progress every N iterations (rank 0)")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard generator and fake score across the processes (FSDP2 fully_shard) instead of "
                             "replicating them (DDP): less memory per GPU, same losses; checkpoints stay whole")
    return parser.parse_args(argv)


def label_sampler(conds: torch.Tensor):
    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        return conds[torch.randint(len(conds), (count,), generator=generator, device=generator.device)]

    return draw


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        train_job(args, device, rank, world_size)
        if world_size > 1:
            dist.barrier()  # the ranks leave together, once rank 0 has written the student
    finally:
        if world_size > 1:
            # the networks (DDP holds the process group) go first: a gloo rank torn down while they lived
            # has aborted at exit ("terminate called without an active exception")
            gc.collect()
            dist.destroy_process_group()
    return 0


def train_job(args: argparse.Namespace, device: torch.device, rank: int, world_size: int) -> None:
    # rank 0 holds the run folder's lock (the trainer node takes the same one): one writer per folder
    holds_lock = rank == 0 and args.job_dir.is_dir()
    lock = run_lock(args.job_dir, owner=f"torchrun job, {world_size} process(es)") if holds_lock else None
    with lock if lock is not None else contextlib.nullcontext():
        job = read_job(args.job_dir, device)
        distiller = Distiller(job.teacher, job.config, cond_sampler=label_sampler(job.conds), uncond=job.uncond,
                              rank=rank, world_size=world_size, fsdp=args.fsdp)
        if rank == 0:
            layout = ("sharded (FSDP)" if distiller.sharded else "replicated (DDP)" if world_size > 1
                      else "one process")
            print(f"{world_size} process(es), networks {layout}, batch {distiller.global_batch} per step",
                  flush=True)
        if latest_checkpoint(job.folder) is not None:
            distiller.resume(job.folder)
        losses_path = job.folder / LOSSES_FILE

        def on_progress(step: int, total: int, losses: dict) -> None:
            if rank != 0:
                return
            with losses_path.open("a") as log:
                log.write(json.dumps({"step": step, **losses}) + "\n")
            if step % args.log_every == 0 or step == total:
                print(f"step {step}/{total}: generator {losses['generator']:.4g}, "
                      f"fake score {losses['fake_score']:.4g}", flush=True)

        distiller.train(job.folder, on_progress=on_progress)  # every rank takes part in a save, rank 0 writes
        if rank == 0:
            ema = distiller.ema.module
            save_network(job.folder / STUDENT_FILE, merged_copy(ema) if has_lora(ema) else ema,
                         {"preset": "custom-sigma", "sigma": job.config.init_sigma, "method": job.config.method,
                          "teacher": job.config.teacher_id, "steps": distiller.step})
            # custom-sigma at init_sigma is what "edm" means when init_sigma is 2.5; it also covers other values
            print(f"student written to {job.folder / STUDENT_FILE}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
