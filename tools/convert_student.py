"""Convert a released SiD-LSG or SIM student checkpoint to a safetensors file the OneStep nodes load.

Released checkpoints are pickles: loading one runs code stored in the file. Run this offline, on a
file from a source you trust, and pass --allow-pickle to say so. SiD-LSG pickles hold a whole
diffusers UNet, so diffusers must be importable here; the output keeps the diffusers key layout,
which ComfyUI's UNet loader reads.

    python tools/convert_student.py --allow-pickle sid_lsg_sd15.pkl sid_lsg_sd15.safetensors --preset sid-lsg
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_loader import load_pack  # noqa: E402

load_pack()
from onestep.distill.student_file import StudentInfo, state_dict_from_pickle, write_safetensors_atomic  # noqa: E402

PRESETS = ("sid-lsg", "edm", "sim-pixart")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the released checkpoint (.pkl / .pt / .pth)")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="required: unpickling executes code from the file, so only convert files you trust")
    parser.add_argument("--preset", choices=PRESETS, default="", help="sampling preset the loader should default to")
    parser.add_argument("--teacher", default="", help="name of the teacher model, stored as metadata")
    parser.add_argument("--method", default="", help="distillation method (sid, sid-lsg, sim), stored as metadata")
    parser.add_argument("--half", action="store_true", help="store floating-point weights as float16")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.allow_pickle:
        print(
            "Refusing to unpickle: loading a pickle runs code stored in the file. Re-run with "
            "--allow-pickle if you trust the source of this checkpoint.",
            file=sys.stderr,
        )
        return 2
    if args.output.suffix.lower() != ".safetensors":
        print(f"The output must end in .safetensors, got '{args.output}'.", file=sys.stderr)
        return 2
    loaded = torch.load(args.source, map_location="cpu", weights_only=False)
    state_dict = state_dict_from_pickle(loaded)
    if args.half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    info = StudentInfo(preset=args.preset, method=args.method, teacher=args.teacher)
    write_safetensors_atomic(args.output, state_dict, info.to_metadata())
    print(f"Wrote {len(state_dict)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
