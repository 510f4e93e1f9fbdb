"""OneStep FD-FMNIST: teacher (35 NFE) against student (1 NFE) on the pack's Fashion-MNIST models.

FD-FMNIST is the Fréchet distance between Gaussian fits of the shipped classifier's features, for generated
images against the 10k test images (shipped statistics). It is not FID and not comparable with FID.
"""

from pathlib import Path

import torch
from comfy_api.latest import io
from PIL import Image

from ..distill.classifier import batched_features
from ..distill.edm_sampling import edm_sigmas, heun_nfe, sample_heun
from ..distill.fmnist import image_grid
from ..distill.frechet import frechet_distance, gaussian_fit, load_stats
from ..distill.network_file import load_network
from ..distill.one_step import SIGMA_INIT_EDM
from ..distill.parametrization import one_step_generate
from .pack_models import PackEDMModel
from .presets import student_info_of
from .training_images import image_tensor

FMNIST_DIR = Path(__file__).resolve().parents[1] / "models" / "fmnist"
GRID_COLUMNS = 10


def edm_network(model, role: str):
    if not isinstance(model.model, PackEDMModel):
        raise ValueError(f"OneStep FD-FMNIST: the {role} must be a pack EDM model (OneStep Load Pack Model or the "
                         f"trainer's student), got {type(model.model).__name__}.")
    return model.model.diffusion_model.denoiser


def fd_fmnist(images: torch.Tensor, classifier, reference: tuple) -> float:
    """FD-FMNIST of generated images against the reference statistics of the test set."""
    mu, cov = gaussian_fit(batched_features(classifier, images.float().cpu()))
    return frechet_distance(mu, cov, *reference)


class OneStepFDFMNIST(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepFDFMNIST",
            display_name="OneStep FD-FMNIST",
            category="OneStep/evaluation",
            description="Sample the teacher with EDM Heun (18 steps = 35 NFE) and the student in one step on the same "
                        "noise and labels, and report FD-FMNIST for both (lower is better; not FID).",
            inputs=[
                io.Model.Input("teacher", tooltip="The pack's Fashion-MNIST teacher."),
                io.Model.Input("student", tooltip="A one-step student of it."),
                io.Int.Input("samples_per_class", default=100, min=2, max=10_000,
                             tooltip="Images per class for the FD estimate (FD is biased upwards for few samples: "
                                     "compare numbers made with the same count)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the shared noise."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid",
                                tooltip="Top rows: teacher at 35 NFE; bottom rows: student at 1 NFE."),
                io.String.Output("report", display_name="report", tooltip="FD-FMNIST of both, with the sample count."),
                io.Float.Output("teacher_fd", display_name="teacher_fd", tooltip="FD-FMNIST of the teacher at 35 NFE."),
                io.Float.Output("student_fd", display_name="student_fd", tooltip="FD-FMNIST of the student at 1 NFE."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, teacher, student, samples_per_class, seed) -> io.NodeOutput:
        teacher_net, student_net = edm_network(teacher, "teacher"), edm_network(student, "student")
        info = student_info_of(student)
        init_sigma = info.sigma if info is not None and info.sigma else SIGMA_INIT_EDM
        labels = torch.arange(10).repeat_interleave(samples_per_class)
        noise = torch.randn((len(labels), 1, 28, 28), generator=torch.Generator().manual_seed(seed))
        sigmas = edm_sigmas(18)
        with torch.no_grad():
            teacher_images = torch.cat([
                sample_heun(teacher_net, chunk * sigmas[0], sigmas, extra_args={"class_labels": chunk_labels})
                for chunk, chunk_labels in zip(noise.split(500), labels.split(500))
            ]).clamp(-1, 1)
            student_images = torch.cat([
                one_step_generate(student_net, chunk, init_sigma, chunk_labels)
                for chunk, chunk_labels in zip(noise.split(500), labels.split(500))
            ]).clamp(-1, 1)
        classifier = load_network(FMNIST_DIR / "classifier.safetensors")
        reference = load_stats(FMNIST_DIR / "reference_stats.safetensors")
        teacher_fd = fd_fmnist(teacher_images, classifier, reference)
        student_fd = fd_fmnist(student_images, classifier, reference)
        report = (f"FD-FMNIST over {len(labels)} samples (not FID): teacher {heun_nfe(sigmas)} NFE {teacher_fd:.2f}, "
                  f"student 1 NFE {student_fd:.2f}")
        return io.NodeOutput(comparison_grid(teacher_images, student_images), report, teacher_fd, student_fd,
                             ui={"text": [report]})


def comparison_grid(teacher_images: torch.Tensor, student_images: torch.Tensor, per_class: int = 2) -> torch.Tensor:
    """The first ``per_class`` images of each class, teacher rows above student rows, as an IMAGE."""
    def pick(images):
        per = len(images) // 10
        return torch.cat([images[c * per:c * per + per_class] for c in range(10)]).reshape(10, per_class, 1, 28, 28) \
            .transpose(0, 1).reshape(-1, 1, 28, 28)

    grid = image_grid(torch.cat([pick(teacher_images), pick(student_images)]), GRID_COLUMNS)
    image = Image.fromarray(grid, mode="L").resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST)
    return image_tensor(image)
