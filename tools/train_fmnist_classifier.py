"""Train the Fashion-MNIST classifier that defines FD-FMNIST, and write the test set's reference statistics.

    .venv/bin/python tools/train_fmnist_classifier.py --minutes 3

Writes models/fmnist/classifier.safetensors (weights, config, test accuracy, steps, wall time) and
models/fmnist/reference_stats.safetensors (mean and covariance of the classifier's features over the
10k test images), so FD-FMNIST can be computed without the dataset.
"""

import hashlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_training import MODELS_DIR, Budget, common_args, lr_factor, random_batches  # noqa: E402
from pack_loader import load_pack  # noqa: E402

load_pack()
from onestep.distill.classifier import FMNISTClassifier, batched_features  # noqa: E402
from onestep.distill.fmnist import load_split  # noqa: E402
from onestep.distill.frechet import gaussian_fit, save_stats  # noqa: E402
from onestep.distill.network_file import save_network  # noqa: E402


def random_shift(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Augmentation: translate each image by up to ``pad`` pixels (background fill -1)."""
    padded = F.pad(images, (pad,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return (predictions == labels).float().mean().item()


def main() -> None:
    parser = common_args(__doc__, minutes=3, batch=128, lr=2e-3)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "classifier.safetensors")
    parser.add_argument("--stats-out", type=Path, default=MODELS_DIR / "reference_stats.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train_x, train_y = load_split("train", args.data)
    test_x, test_y = load_split("test", args.data)
    model = FMNISTClassifier().to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"classifier: {parameters} parameters, budget {args.minutes} {args.clock} min", flush=True)

    budget, step = Budget(args.minutes, args.clock), 0
    for index in random_batches(len(train_x), args.batch, generator):
        if budget.fraction() >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(budget.fraction(), args.warmup)
        model.train()
        images = random_shift(train_x[index], generator).to(args.device)
        loss = F.cross_entropy(model(images), train_y[index].to(args.device), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{budget.spent() / 60:.1f} {args.clock} min", flush=True)

    model = model.cpu()
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"test accuracy {test_accuracy:.4f} after {step} steps ({step * args.batch / len(train_x):.1f} epochs), "
          f"{budget.spent() / 60:.1f} {args.clock} min, {budget.wall() / 60:.1f} wall min", flush=True)
    info = {"test_accuracy": test_accuracy, "steps": step, "batch": args.batch,
            "cpu_minutes" if args.clock == "cpu" else "minutes": round(budget.spent() / 60, 2),
            "wall_minutes": round(budget.wall() / 60, 2),
            "device": args.device, "threads": args.threads, "data": "Fashion-MNIST train (60k), random shifts <= 2 px"}
    save_network(args.out, model, info)

    mu, cov = gaussian_fit(batched_features(model, test_x))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    save_stats(args.stats_out, mu, cov, {"onestep.images": "Fashion-MNIST test (10000)",
                                         "onestep.classifier_sha256": digest})
    print(f"wrote {args.out} and {args.stats_out} (features {mu.shape[0]}-d over {len(test_x)} test images)")


if __name__ == "__main__":
    main()
