"""Write the shipped workflows in both formats from one description: UI (for people and ComfyUI's
template browser) and API (for POST /prompt and the e2e tests).

    python tools/build_workflows.py      # rewrites workflows/*.json and workflows/api/*.json
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 60, 40


@dataclass(frozen=True)
class Link:
    node: "Node"
    slot: int

    @property
    def type(self) -> str:
        return self.node.outputs[self.slot][1]


@dataclass(frozen=True)
class Seed:
    """An INT widget with ComfyUI's 'control after generate' companion value."""

    value: int
    control: str = "fixed"


@dataclass
class Node:
    id: int
    type: str
    inputs: list[tuple[str, object]]
    outputs: list[tuple[str, str]]
    column: int
    row: int
    title: str | None = None

    def out(self, slot: int = 0) -> Link:
        return Link(self, slot)


@dataclass
class Workflow:
    name: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, type_, inputs, outputs, column, row, title=None) -> Node:
        node = Node(len(self.nodes) + 1, type_, list(inputs), list(outputs), column, row, title)
        self.nodes.append(node)
        return node

    def api_format(self) -> dict:
        prompt = {}
        for node in self.nodes:
            inputs = {}
            for name, value in node.inputs:
                if isinstance(value, Link):
                    inputs[name] = [str(value.node.id), value.slot]
                else:
                    inputs[name] = value.value if isinstance(value, Seed) else value
            title = node.title or node.type
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": title}}
        return prompt

    def ui_format(self) -> dict:
        links, consumers = [], {}
        for node in self.nodes:
            for slot, (_, value) in enumerate(i for i in node.inputs if isinstance(i[1], Link)):
                link_id = len(links) + 1
                links.append([link_id, value.node.id, value.slot, node.id, slot, value.type])
                consumers.setdefault((value.node.id, value.slot), []).append(link_id)
        ui_nodes = []
        for order, node in enumerate(self.nodes):
            socket_inputs = [(n, v) for n, v in node.inputs if isinstance(v, Link)]
            widgets = []
            for _, value in node.inputs:
                if isinstance(value, Seed):
                    widgets += [value.value, value.control]
                elif not isinstance(value, Link):
                    widgets.append(value)
            link_of_input = {}
            for link in links:
                if link[3] == node.id:
                    link_of_input[link[4]] = link[0]
            ui_node = {
                "id": node.id,
                "type": node.type,
                "pos": [node.column * (NODE_WIDTH + COLUMN_GAP), node.row * 260 + ROW_GAP],
                "size": [NODE_WIDTH, 220],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": name, "type": value.type, "link": link_of_input[slot]}
                    for slot, (name, value) in enumerate(socket_inputs)
                ],
                "outputs": [
                    {"name": name, "type": type_, "links": consumers.get((node.id, slot), []), "slot_index": slot}
                    for slot, (name, type_) in enumerate(node.outputs)
                ],
                "properties": {"Node name for S&R": node.type},
                "widgets_values": widgets,
            }
            if node.title:
                ui_node["title"] = node.title
            ui_nodes.append(ui_node)
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }


PROMPT = "a photo of a red fox sitting in fresh snow, golden hour, detailed fur"
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SID_LSG_STUDENT = "sid_lsg_sd15_cfg1.5.safetensors"
SIM_STUDENT = "sim_dit_600m.safetensors"
T5_XXL = "t5xxl_fp16.safetensors"
PIXART_VAE = "sd-vae-ft-ema.safetensors"

CHECKPOINT_OUTPUTS = [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]
STUDENT_OUTPUTS = [("MODEL", "MODEL"), ("info", "STRING")]


def one_step_generate_inputs(model: Link, positive: Link, preset: str) -> list:
    return [("model", model), ("positive", positive), ("seed", Seed(42)), ("batch_size", 1), ("width", 512),
            ("height", 512), ("preset", preset), ("steps", 1), ("custom_value", 2.5)]


def sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", base.out(1))], [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), text.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sid_lsg_sd15")], [], 4, 0)
    return w


def fast_sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_fast_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    fast = w.add("OneStepFastPath", [("model", student.out(0)), ("strategy", "auto"), ("compile", True)],
                 [("MODEL", "MODEL")], 1, 1, "Fast path (CUDA graph; eager on the CPU)")
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", base.out(1))], [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(fast.out(0), text.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("OneStepFastDecode", [("samples", latent.out(0)), ("vae", base.out(2)), ("strategy", "auto")],
                  [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/fast_sid_lsg_sd15")], [], 4, 0)
    return w


def sim_pixart() -> Workflow:
    w = Workflow("onestep_sim_pixart")
    student = w.add("OneStepLoadStudent", [("student_name", SIM_STUDENT)], STUDENT_OUTPUTS, 0, 0,
                    "SIM-DiT-600M student (PixArt-alpha)")
    t5 = w.add("CLIPLoader", [("clip_name", T5_XXL), ("type", "pixart"), ("device", "default")],
               [("CLIP", "CLIP")], 0, 1)
    vae = w.add("VAELoader", [("vae_name", PIXART_VAE)], [("VAE", "VAE")], 0, 2)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", t5.out(0))], [("CONDITIONING", "CONDITIONING")], 1, 1)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), text.out(0), "sim-pixart"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", vae.out(0))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sim_pixart")], [], 4, 0)
    return w


def teacher_vs_student_sd15() -> Workflow:
    w = Workflow("onestep_teacher_vs_student_sd15")
    teacher = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                    "Teacher: SD1.5")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 2,
                    "Student: SiD-LSG one-step")
    positive = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", teacher.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0, "Prompt")
    negative = w.add("CLIPTextEncode", [("text", ""), ("clip", teacher.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 1, "Negative prompt (teacher only)")
    empty = w.add("EmptyLatentImage", [("width", 512), ("height", 512), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 1, 2)
    teacher_latent = w.add(
        "KSampler",
        [("model", teacher.out(0)), ("seed", Seed(42)), ("steps", 25), ("cfg", 7.5), ("sampler_name", "euler"),
         ("scheduler", "normal"), ("positive", positive.out(0)), ("negative", negative.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 2, 0, "Teacher: 25 steps, cfg 7.5",
    )
    sampler = w.add("OneStepSampler", [], [("SAMPLER", "SAMPLER")], 2, 1)
    sigmas = w.add("OneStepSigmas", [("model", student.out(0)), ("preset", "sid-lsg"), ("steps", 1),
                                     ("custom_value", 2.5)], [("SIGMAS", "SIGMAS")], 2, 2)
    student_latent = w.add(
        "SamplerCustom",
        [("model", student.out(0)), ("add_noise", True), ("noise_seed", Seed(42)), ("cfg", 1.0),
         ("positive", positive.out(0)), ("negative", negative.out(0)), ("sampler", sampler.out(0)),
         ("sigmas", sigmas.out(0)), ("latent_image", empty.out(0))],
        [("output", "LATENT"), ("denoised_output", "LATENT")], 3, 1, "Student: 1 step, cfg 1",
    )
    teacher_image = w.add("VAEDecode", [("samples", teacher_latent.out(0)), ("vae", teacher.out(2))],
                          [("IMAGE", "IMAGE")], 4, 0)
    student_image = w.add("VAEDecode", [("samples", student_latent.out(0)), ("vae", teacher.out(2))],
                          [("IMAGE", "IMAGE")], 4, 1)
    side_by_side = w.add(
        "ImageStitch",
        [("image1", teacher_image.out(0)), ("direction", "right"), ("match_image_size", True),
         ("spacing_width", 0), ("spacing_color", "white"), ("image2", student_image.out(0))],
        [("IMAGE", "IMAGE")], 5, 0, "Teacher (left) vs student (right)",
    )
    w.add("SaveImage", [("images", side_by_side.out(0)), ("filename_prefix", "onestep/teacher_vs_student")],
          [], 6, 0)
    return w


def distill_fmnist() -> Workflow:
    w = Workflow("onestep_distill_fmnist")
    teacher = w.add("OneStepLoadPackModel", [("model_name", "teacher.safetensors")], [("MODEL", "MODEL")], 0, 0,
                    "Teacher: the shipped Fashion-MNIST EDM model")
    prompts = w.add("OneStepPromptSource", [("kind", "class labels"), ("labels", "0-9"), ("prompts", ""),
                                            ("prompt_file", "")], [("ONESTEP_PROMPTS", "ONESTEP_PROMPTS")], 0, 1)
    config = w.add(
        "OneStepDistillConfig",
        [("method", "sid"), ("iterations", 150), ("batch_size", 32), ("lr_generator", 1e-4), ("lr_fake_score", 1e-4),
         ("alpha", 1.2), ("k1_train_fake", 1.0), ("k2_k3_eval_fake", 1.0), ("k4_eval_real", 1.0), ("sim_c", 1e-3),
         ("width", 28), ("height", 28), ("precision", "fp32"), ("ema_halflife_kimg", 0.5), ("seed", 0),
         ("checkpoint_every", 100), ("preview_every", 20)],
        [("ONESTEP_DISTILL_CONFIG", "ONESTEP_DISTILL_CONFIG")], 0, 2,
    )
    trainer = w.add(
        "OneStepDistillTrainer",
        [("teacher", teacher.out(0)), ("prompts", prompts.out(0)), ("config", config.out(0)),
         ("run_name", "fmnist_sid"), ("resume", True)],
        [("student", "MODEL"), ("run_folder", "STRING"), ("curve", "IMAGE")], 1, 0,
    )
    w.add("OneStepSaveStudent", [("student", trainer.out(0)), ("name", "fmnist_sid_student")],
          [("path", "STRING")], 2, 1)
    evaluation = w.add(
        "OneStepFDFMNIST",
        [("teacher", teacher.out(0)), ("student", trainer.out(0)), ("samples_per_class", 50), ("seed", 0)],
        [("grid", "IMAGE"), ("report", "STRING"), ("teacher_fd", "FLOAT"), ("student_fd", "FLOAT")], 2, 0,
        "Teacher 35 NFE (top) vs student 1 NFE (bottom)",
    )
    w.add("SaveImage", [("images", evaluation.out(0)), ("filename_prefix", "onestep/fmnist_teacher_vs_student")],
          [], 3, 0)
    w.add("SaveImage", [("images", trainer.out(2)), ("filename_prefix", "onestep/fmnist_training_curve")], [], 3, 1)
    return w


WORKFLOWS = [distill_fmnist, sid_lsg_sd15, fast_sid_lsg_sd15, sim_pixart, teacher_vs_student_sd15]


def write_all(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    written = []
    (directory / "api").mkdir(parents=True, exist_ok=True)
    for build in WORKFLOWS:
        workflow = build()
        for path, content in ((directory / f"{workflow.name}.json", workflow.ui_format()),
                              (directory / "api" / f"{workflow.name}.json", workflow.api_format())):
            path.write_text(json.dumps(content, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
