"""Distil the shipped Fashion-MNIST teacher into one-step students with SiD and SIM; FD-FMNIST against time.

    .venv/bin/python benchmarks/distill_fmnist.py                  # reduced scale on the CPU (labelled so)
    .venv/bin/python benchmarks/distill_fmnist.py --record         # the run of record: 60 CPU-min per method,
                                                                   # one process per method (both cores)
    .venv/bin/python benchmarks/distill_fmnist.py --device cuda    # full scale on a GPU
    .venv/bin/python benchmarks/distill_fmnist.py --device cuda --minutes 1 --eval-every 0.25   # GPU, shorter
    .venv/bin/python benchmarks/distill_fmnist.py --dry-run DIR    # seconds on the CPU; marked result in DIR only

FD-FMNIST: the Fréchet distance between Gaussian fits of the shipped classifier's 128-d features, for
generated images against the 10k test images (models/fmnist/reference_stats.safetensors). It is not
FID and is not comparable with FID. Every FD of one run uses the same number of samples and the same
noise, labels balanced over the 10 classes. Reported: the teacher at 35 NFE (EDM Heun, 18 steps) and at
1 NFE (one Euler step from sigma_max), SiD and SIM (pseudo-Huber) students at 1 NFE, their EMA and raw
generators both, with the FD curve against training time and images seen (evaluation time excluded; on
the CPU the clock is the training process's CPU time, so a shared machine does not distort it), a
power-law trend fitted to the EMA curve's second half and the images it projects to reach the teacher,
and the cost of one distillation iteration in teacher forward+backward passes on the same batch, next to
the network passes it makes. The students use the official recipe for EDM teachers (distill/recipes.py:
alpha 1.2, EMA half-life 500 kimg with the 5 % ramp-up, sigma 2.5) except the learning rate and batch,
which the scale sets (a CPU hour cannot run CIFAR's batch 256 at lr 1e-5 far).
"""

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_dry_run_argument,
    describe_device,
    interleaved_medians,
    output_dir,
    set_dry_run,
    write_result,
)
from pack_loader import REPO_ROOT, load_pack  # noqa: E402

load_pack()
from onestep.distill.classifier import batched_features  # noqa: E402
from onestep.distill.edm_sampling import edm_sigmas, heun_nfe, sample_euler, sample_heun  # noqa: E402
from onestep.distill.fmnist import image_grid, load_split  # noqa: E402
from onestep.distill.frechet import frechet_distance, gaussian_fit, load_stats  # noqa: E402
from onestep.distill.losses import edm_fake_score_loss  # noqa: E402
from onestep.distill.network_file import load_network  # noqa: E402
from onestep.distill.noise_levels import edm_training_sigmas  # noqa: E402
from onestep.distill.parametrization import one_step_generate  # noqa: E402
from onestep.distill.training import DistillConfig, Distiller, DivergenceError  # noqa: E402

MODELS = REPO_ROOT / "models" / "fmnist"
SCALES = {
    "reduced-cpu": dict(minutes=9.0, batch=32, eval_every=1.0, eval_samples=2000, lr=1e-4),
    "record-cpu": dict(minutes=60.0, batch=32, eval_every=5.0, eval_samples=2000, lr=1e-4),
    "full-gpu": dict(minutes=3.0, batch=256, eval_every=0.25, eval_samples=10000, lr=5e-5),
    "dry-run": dict(minutes=0.02, batch=8, eval_every=0.01, eval_samples=100, lr=1e-4),
}
METHODS = ("sid", "sim")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--minutes", type=float, help="training budget per method (CPU minutes on the CPU)")
    parser.add_argument("--batch", type=int, help="distillation batch size")
    parser.add_argument("--eval-every", type=float, help="minutes of training between FD evaluations")
    parser.add_argument("--eval-samples", type=int, help="samples per FD (teacher, curve and final alike)")
    parser.add_argument("--lr", type=float, help="Adam learning rate of the generator and the fake score")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help="the CPU run of record: 60 CPU-minutes per method, the methods in parallel processes")
    add_dry_run_argument(parser)
    args = parser.parse_args()
    if args.dry_run is not None:
        set_dry_run(args.dry_run)
        args.device, args.methods = "cpu", ["sid"]
    args.scale = ("dry-run" if args.dry_run is not None else "full-gpu" if args.device == "cuda"
                  else "record-cpu" if args.record else "reduced-cpu")
    for key, value in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


class TrainingClock:
    """Training time only: process CPU time on the CPU, synchronised wall time on a GPU; paused around evaluations."""

    LABELS = {"cpu": "process CPU", "cuda": "wall-clock"}

    def __init__(self, device: torch.device):
        self.device = device
        self.total = 0.0
        self._started = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def start(self) -> None:
        self._started = self._now()

    def stop(self) -> None:
        self.total += self._now() - self._started

    def minutes(self) -> float:
        return self.total / 60


class FDMeter:
    """FD-FMNIST of a label-conditioned sampler, on fixed noise and balanced labels."""

    def __init__(self, classifier, stats_path: Path, samples: int, device: torch.device, seed: int):
        self.classifier, self.device = classifier, device
        self.mu, self.cov = load_stats(stats_path)
        self.labels = (torch.arange(samples) % 10).to(device)
        self.noise = torch.randn((samples, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).to(device)

    @torch.no_grad()
    def images(self, sample, batch: int = 500) -> torch.Tensor:
        """sample(z, labels) -> images, over all the fixed noise, clamped to [-1, 1]."""
        return torch.cat([sample(self.noise[i : i + batch], self.labels[i : i + batch]).clamp(-1, 1)
                          for i in range(0, len(self.labels), batch)])

    def of_images(self, images: torch.Tensor) -> float:
        mu, cov = gaussian_fit(batched_features(self.classifier, images))
        return frechet_distance(mu, cov, self.mu, self.cov)

    def __call__(self, sample) -> float:
        return self.of_images(self.images(sample))


def teacher_heun(teacher):
    sigmas = edm_sigmas().to(next(teacher.parameters()).device)
    return lambda z, labels: sample_heun(teacher, z * sigmas[0], sigmas, {"class_labels": labels})


def teacher_one_step(teacher):
    sigmas = torch.tensor([80.0, 0.0], device=next(teacher.parameters()).device)
    return lambda z, labels: sample_euler(teacher, z * sigmas[0], sigmas, {"class_labels": labels})


def student(distiller: Distiller, use_ema: bool = True):
    """The EMA (or raw) generator, one step: x = G(2.5 z, 2.5, label)."""
    generator = distiller.ema.module if use_ema else distiller.generator
    return lambda z, labels: one_step_generate(generator, z, distiller.config.init_sigma, labels)


def make_distiller(teacher, method: str, args, teacher_id: str) -> Distiller:
    """The method's official EDM recipe (DistillConfig's defaults), at the scale's learning rate and batch."""
    config = DistillConfig(method=method, teacher_id=teacher_id, steps=10**9, batch_size=args.batch,
                           sample_shape=(1, 28, 28), lr_generator=args.lr, lr_fake_score=args.lr, seed=args.seed)
    return Distiller(teacher, config, cond_sampler=random_labels)


def random_labels(n: int, rng: torch.Generator) -> Tensor:
    """Uniform class labels, drawn from the run's own generator (on its device)."""
    return torch.randint(0, 10, (n,), generator=rng, device=rng.device)


def distil(teacher, method: str, args, meter: FDMeter, teacher_id: str, device: torch.device,
           progress_file: Path | None = None) -> tuple[dict, Tensor]:
    """Train one student for ``args.minutes`` of training time, with EMA and raw FDs every ``args.eval_every``
    minutes (each point also written to ``progress_file``, so a stopped run keeps its curve)."""
    distiller = make_distiller(teacher, method, args, teacher_id)
    clock, curve, wall_started, stopped = TrainingClock(device), [], time.perf_counter(), None

    def evaluate():
        fd, fd_raw = meter(student(distiller)), meter(student(distiller, use_ema=False))
        curve.append({"minutes": round(clock.minutes(), 3), "iterations": distiller.step, "images": distiller.cur_nimg,
                      "fd": fd, "fd_raw": fd_raw})
        print(f"  {method}: {clock.minutes():.2f} min, {distiller.step} it, {distiller.cur_nimg} images, FD-FMNIST "
              f"EMA {fd:.2f} raw {fd_raw:.2f}", flush=True)
        if progress_file is not None:
            progress_file.write_text(json.dumps({"method": method, "curve": curve}, indent=1) + "\n")

    evaluate()
    while clock.minutes() < args.minutes:
        clock.start()
        try:
            distiller.train_step()
        except DivergenceError as error:
            stopped = str(error)
            clock.stop()
            break
        clock.stop()
        if clock.minutes() >= min(len(curve) * args.eval_every, args.minutes):
            evaluate()
    run = {"fd_1nfe": curve[-1]["fd"], "fd_1nfe_raw": curve[-1]["fd_raw"], "curve": curve,
           "iterations": distiller.step, "images": distiller.cur_nimg, "training_minutes": round(clock.minutes(), 2),
           "dropped_samples": distiller.dropped_samples, "stopped": stopped,
           "wall_minutes": round((time.perf_counter() - wall_started) / 60, 2), "config": distiller.config.to_dict()}
    run["trend"] = power_law_trend(curve)
    return run, meter.images(student(distiller))[:100]


def power_law_trend(curve: list[dict]) -> dict | None:
    """FD ~ a * images^b fitted (least squares in log-log) to the EMA curve's second half."""
    points = [p for p in curve[len(curve) // 2:] if p["images"] > 0 and p["fd"] > 0]
    if len(points) < 3:
        return None
    x = torch.tensor([math.log(p["images"]) for p in points], dtype=torch.float64)
    y = torch.tensor([math.log(p["fd"]) for p in points], dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    residual = float((y - intercept - slope * x).std())
    return {"fitted_on_images": [points[0]["images"], points[-1]["images"]], "exponent": slope,
            "log_intercept": intercept, "log_residual_std": residual}


def images_to_reach(trend: dict | None, target_fd: float) -> float | None:
    """Images at which the fitted power law reaches ``target_fd`` (None without a falling trend)."""
    if trend is None or trend["exponent"] >= 0:
        return None
    return math.exp((math.log(target_fd) - trend["log_intercept"]) / trend["exponent"])


def distil_in_child(method: str, args, teacher_id: str, progress_file: Path, result_file: Path) -> None:
    """One method in its own process (one thread): the run of record uses both cores."""
    torch.set_num_threads(1)
    device = torch.device(args.device)
    teacher = load_network(MODELS / "teacher.safetensors", device)
    meter = FDMeter(load_network(MODELS / "classifier.safetensors", device), MODELS / "reference_stats.safetensors",
                    args.eval_samples, device, args.seed)
    run, images = distil(teacher, method, args, meter, teacher_id, device, progress_file)
    torch.save({"run": json.dumps(run), "images": images}, result_file)


def count_passes(distiller: Distiller) -> dict:
    """Forward and backward passes of each network during one ``train_step``, counted by module hooks."""
    nets = {"generator": distiller.generator, "fake_score": distiller.fake_score, "teacher": distiller.teacher}
    counts = {name: {"forward": 0, "backward": 0} for name in nets}

    def counter(name, kind):
        def hook(*_):
            counts[name][kind] += 1
        return hook

    handles = []
    for name, net in nets.items():
        handles += [net.register_forward_hook(counter(name, "forward")),
                    net.register_full_backward_hook(counter(name, "backward"))]
    with warnings.catch_warnings():  # fake-score step: its input needs no gradient, the hook fires on outputs (wanted)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        distiller.train_step()
    for handle in handles:
        handle.remove()
    counts["total"] = {kind: sum(c[kind] for c in counts.values()) for kind in ("forward", "backward")}
    return counts


def iteration_cost(teacher, method: str, args, teacher_id: str, device: torch.device, repeats: int) -> dict:
    """Median time of one distillation iteration over one teacher forward+backward (weights) on the same batch."""
    distiller = make_distiller(teacher, method, args, teacher_id)
    passes = count_passes(distiller)
    trainable = copy.deepcopy(teacher).train().requires_grad_(True)
    rng = torch.Generator().manual_seed(args.seed)
    images = (0.5 * torch.randn((args.batch, 1, 28, 28), generator=rng)).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=rng).to(device)
    noise = torch.randn(images.shape, generator=rng).to(device)

    def teacher_forward_backward():
        sigma = edm_training_sigmas(args.batch, generator=rng).to(device)
        denoised = trainable(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma, labels)
        trainable.zero_grad(set_to_none=True)
        edm_fake_score_loss(denoised, images, sigma).mean().backward()

    seconds = interleaved_medians({"iteration": distiller.train_step, "teacher": teacher_forward_backward}, repeats,
                                  device)
    return {"iteration_seconds": seconds["iteration"], "teacher_forward_backward_seconds": seconds["teacher"],
            "ratio": seconds["iteration"] / seconds["teacher"], "batch": args.batch, "passes_per_iteration": passes}


def sample_grids(images: dict[str, torch.Tensor], path: Path) -> None:
    """One 10x10 panel per source; column c holds class c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    for ax, (title, batch) in zip(axes, images.items(), strict=True):
        ax.imshow(image_grid(batch, columns=10), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(result: dict, path: Path) -> None:
    """FD against images seen: EMA (solid) and raw (faint) students, each EMA curve's power-law trend, the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for (method, run), color in zip(result["runs"].items(), ("tab:blue", "tab:orange"), strict=False):
        points = [p for p in run["curve"] if p["images"] > 0]
        images = [p["images"] / 1000 for p in points]
        ax.plot(images, [p["fd"] for p in points], marker="o", color=color,
                label=f"{method.upper()} student (EMA), 1 NFE")
        ax.plot(images, [p["fd_raw"] for p in points], marker=".", color=color, alpha=0.35, linestyle="--",
                label=f"{method.upper()} student (raw), 1 NFE")
        trend = run.get("trend")
        if trend is not None:
            reach = run.get("images_to_teacher")
            end = min(reach, 100 * points[-1]["images"]) if reach else 10 * points[-1]["images"]
            xs = torch.logspace(math.log10(trend["fitted_on_images"][0]), math.log10(end), 50, dtype=torch.float64)
            ys = (trend["log_intercept"] + trend["exponent"] * xs.log()).exp()
            ax.plot((xs / 1000).tolist(), ys.tolist(), color=color, linestyle=":",
                    label=f"{method.upper()} trend, FD ~ images^{trend['exponent']:.2f}")
    ax.axhline(result["teacher_fd_35nfe"], color="black", linestyle="--", label="teacher, 35 NFE (EDM Heun)")
    ax.axhline(result["teacher_fd_1nfe"], color="gray", linestyle=":", label="teacher, 1 NFE (Euler)")
    if result["data_fd"] is not None:
        ax.axhline(result["data_fd"], color="green", linestyle="-.", label="training images (floor at this N)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"images seen by the generator, thousands ({result['clock']} clock, {result['minutes']:g} min per "
                  "method)")
    ax.set_ylabel(f"FD-FMNIST ({result['samples']} samples)")
    ax.set_title(f"Fashion-MNIST distillation, {result['scale']}, {result['device']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_in_children(args, teacher_id: str, folder: Path) -> list:
    """Start one process per method (the run of record); returns (method, process, progress, result) tuples."""
    context = multiprocessing.get_context("spawn")
    children = []
    for method in args.methods:
        progress, result = folder / f"distill_fmnist_{method}.progress.json", folder / f"distill_fmnist_{method}.pt"
        process = context.Process(target=distil_in_child, args=(method, args, teacher_id, progress, result))
        process.start()
        children.append((method, process, progress, result))
    return children


def collect_children(children: list) -> tuple[dict, dict]:
    runs, images = {}, {}
    for method, process, progress, result in children:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"the {method} process failed (exit {process.exitcode}); its curve so far: {progress}")
        saved = torch.load(result, weights_only=True)
        runs[method], images[method] = json.loads(saved["run"]), saved["images"]
        result.unlink()
        progress.unlink()
    return runs, images


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher_path = MODELS / "teacher.safetensors"
    teacher = load_network(teacher_path, device)
    classifier = load_network(MODELS / "classifier.safetensors", device)
    teacher_id = "fmnist teacher sha256:" + hashlib.sha256(teacher_path.read_bytes()).hexdigest()[:16]
    meter = FDMeter(classifier, MODELS / "reference_stats.safetensors", args.eval_samples, device, args.seed)
    print(f"{args.scale} on {describe_device(device)}: {args.eval_samples} samples per FD", flush=True)

    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    children = run_in_children(args, teacher_id, folder) if args.record else []
    started = time.perf_counter()
    grids = {"teacher, 35 NFE": meter.images(teacher_heun(teacher))}
    teacher_fd_35 = meter.of_images(grids["teacher, 35 NFE"])
    heun_minutes = (time.perf_counter() - started) / 60
    grids["teacher, 1 NFE"] = meter.images(teacher_one_step(teacher))
    teacher_fd_1 = meter.of_images(grids["teacher, 1 NFE"])
    print(f"teacher FD-FMNIST: {teacher_fd_35:.2f} at {heun_nfe(edm_sigmas())} NFE ({heun_minutes:.1f} min), "
          f"{teacher_fd_1:.2f} at 1 NFE", flush=True)
    try:
        data_fd = meter.of_images(load_split("train")[0][: args.eval_samples].to(device))
    except FileNotFoundError:
        data_fd = None

    costs, runs = {}, {}
    if args.record:  # timings beside two training processes would measure the contention: see the reduced run
        runs, students = collect_children(children)
        for method in args.methods:
            grids[f"{method.upper()} student, 1 NFE"] = students[method]
    else:
        repeats = {"reduced-cpu": 5, "full-gpu": 20, "dry-run": 2}[args.scale]
        for method in args.methods:
            costs[method] = iteration_cost(teacher, method, args, teacher_id, device, repeats)
            print(f"{method}: one iteration = {costs[method]['ratio']:.2f} teacher forward+backward passes "
                  f"(batch {args.batch}); passes {costs[method]['passes_per_iteration']['total']}", flush=True)
        for method in args.methods:
            run, grids[f"{method.upper()} student, 1 NFE"] = distil(teacher, method, args, meter, teacher_id, device)
            runs[method] = run
    for run in runs.values():
        run["images_to_teacher"] = images_to_reach(run["trend"], teacher_fd_35)

    result = {
        "scale": args.scale, "clock": TrainingClock.LABELS[device.type],
        "device": describe_device(device) + (f", one process per method ({len(runs)})" if args.record else ""),
        "samples": args.eval_samples, "minutes": args.minutes, "batch": args.batch, "lr": args.lr,
        "recipe": "DistillConfig defaults for an EDM teacher (distill/recipes.py) but lr and batch from the scale",
        "teacher_fd_35nfe": teacher_fd_35, "teacher_fd_1nfe": teacher_fd_1,
        "teacher_heun_minutes": round(heun_minutes, 2), "data_fd": data_fd,
        **{f"{method}_fd_1nfe": run["fd_1nfe"] for method, run in runs.items()},
        "runs": runs, "cost": costs,
        "teacher": {"file": "models/fmnist/teacher.safetensors", "id": teacher_id},
    }
    plot_curves(result, folder / "distill_fmnist.png")
    sample_grids({title: batch[:100] for title, batch in grids.items()}, folder / "distill_fmnist_samples.png")
    command = shlex.join(["python", "benchmarks/distill_fmnist.py", *sys.argv[1:]])
    summary = (f"{args.scale}: FD-FMNIST teacher {teacher_fd_35:.2f} (35 NFE) / {teacher_fd_1:.2f} (1 NFE); "
               + ", ".join(f"{m.upper()} EMA {r['fd_1nfe']:.2f} / raw {r['fd_1nfe_raw']:.2f} (1 NFE, "
                           f"{r['training_minutes']:g} min, {r['images']} images)" for m, r in runs.items())
               + ("; iteration / teacher fwd+bwd: " + ", ".join(f"{m.upper()} {c['ratio']:.1f}x"
                                                                for m, c in costs.items()) if costs else ""))
    path = write_result("distill_fmnist", result, command, summary)
    print(f"wrote {path}\n{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
