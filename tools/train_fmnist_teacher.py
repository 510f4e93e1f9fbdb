"""Train the class-conditional EDM teacher on Fashion-MNIST (Karras et al. 2022: Table 1 preconditioning and loss).

    .venv/bin/python tools/train_fmnist_teacher.py --minutes 25

Loss: lambda(sigma) ||D(x + sigma n, sigma, label) - x||^2 with ln(sigma) ~ N(-1.2, 1.2^2), 10% of the
labels replaced by the null class; Adam with warm-up and a cosine decay over the budget (CPU minutes by default), an
EMA of the weights (the EMA is what ships). Writes models/fmnist/teacher.safetensors (saved again
every --save-every minutes) and a 10x10 grid of 35-NFE Heun samples, one class per row.
"""

import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_training import MODELS_DIR, Budget, common_args, lr_factor, random_batches  # noqa: E402
from pack_loader import load_pack  # noqa: E402

load_pack()
from onestep.distill.edm_sampling import edm_sigmas, sample_heun  # noqa: E402
from onestep.distill.ema import EMA  # noqa: E402
from onestep.distill.fmnist import image_grid, load_split  # noqa: E402
from onestep.distill.losses import edm_fake_score_loss  # noqa: E402
from onestep.distill.network_file import save_network  # noqa: E402
from onestep.distill.networks import EDMDenoiser  # noqa: E402
from onestep.distill.noise_levels import edm_training_sigmas  # noqa: E402


def edm_training_loss(net: EDMDenoiser, images, labels, generator, label_dropout: float) -> torch.Tensor:
    """EDM's denoising loss (Karras et al. 2022, Eq. 2 and Table 1), per pixel, with label dropout to the null class."""
    n = images.shape[0]
    sigma = edm_training_sigmas(n, generator=generator).to(images.device)
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    drop = torch.rand(n, generator=generator).to(images.device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, net.num_classes), labels)
    denoised = net(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma, labels)
    return edm_fake_score_loss(denoised, images, sigma, net.sigma_data).mean() / images[0].numel()


@torch.no_grad()
def class_grid(net: EDMDenoiser, per_class: int = 10, seed: int = 0) -> torch.Tensor:
    """35-NFE Heun samples, ``per_class`` of each class, class-major (one row per class in a 10-wide grid)."""
    labels = torch.arange(net.num_classes).repeat_interleave(per_class)
    device = next(net.parameters()).device
    z = torch.randn((len(labels), 1, 28, 28), generator=torch.Generator().manual_seed(seed)).to(device)
    sigmas = edm_sigmas().to(device)
    return sample_heun(net, z * sigmas[0], sigmas, {"class_labels": labels.to(device)})


def main() -> None:
    parser = common_args(__doc__, minutes=25, batch=64, lr=2e-3)
    parser.add_argument("--channels", default="16,32,64", help="UNet widths, one resolution level each")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per level")
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--ema-halflife-kimg", type=float, default=10.0)
    parser.add_argument("--ema-rampup", type=float, default=0.1)
    parser.add_argument("--save-every", type=float, default=5.0, help="wall minutes between saves of the EMA weights")
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "teacher.safetensors")
    parser.add_argument("--grid", type=Path, default=MODELS_DIR / "teacher_samples_35nfe.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    images, labels = load_split("train", args.data)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = EDMDenoiser(channels=channels, blocks=args.blocks).to(args.device)
    ema = EMA(net, args.ema_halflife_kimg, args.ema_rampup)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    parameters = sum(p.numel() for p in net.parameters())
    print(f"teacher: {parameters} parameters, channels {channels}, blocks {args.blocks}, "
          f"budget {args.minutes} {args.clock} min on {args.device}", flush=True)

    def save(step: int) -> None:
        info = {"steps": step, "batch": args.batch, "images_seen": step * args.batch,
                "cpu_minutes" if args.clock == "cpu" else "minutes": round(budget.spent() / 60, 2),
                "wall_minutes": round(budget.wall() / 60, 2), "device": args.device, "threads": args.threads,
                "parameters": parameters, "lr": args.lr, "ema_halflife_kimg": args.ema_halflife_kimg,
                "data": "Fashion-MNIST train (60k), [-1, 1]"}
        save_network(args.out, ema.module, info)

    budget, step, last_save, running = Budget(args.minutes, args.clock), 0, 0.0, 0.0
    for index in random_batches(len(images), args.batch, generator):
        if budget.fraction() >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(budget.fraction(), args.warmup)
        net.train()
        loss = edm_training_loss(net, images[index].to(args.device), labels[index].to(args.device), generator,
                                 args.label_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        step += 1
        ema.update(net, args.batch, step * args.batch)
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {running:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{budget.spent() / 60:.1f} {args.clock} min, {budget.wall() / 60:.1f} wall min", flush=True)
        if budget.wall() - last_save >= args.save_every * 60:
            save(step)
            last_save = budget.wall()
            print(f"saved {args.out} at step {step}", flush=True)

    save(step)
    print(f"done: {step} steps, {step * args.batch / len(images):.1f} epochs, "
          f"{budget.spent() / 60:.1f} {args.clock} min, {budget.wall() / 60:.1f} wall min; "
          f"wrote {args.out}", flush=True)
    samples = class_grid(ema.module)
    Image.fromarray(image_grid(samples, columns=10)).resize((290 * 2, 290 * 2), Image.NEAREST).save(args.grid)
    print(f"wrote {args.grid}", flush=True)


if __name__ == "__main__":
    main()
