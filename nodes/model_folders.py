"""Model folders of the pack in ComfyUI's ``folder_paths``."""

from pathlib import Path

import folder_paths


def ensure_model_folder(name: str, path: Path | None = None, extensions: set[str] | None = None) -> None:
    """Register ``models/<name>`` (or ``path``) under ``name`` unless the user already configured that name, and list
    files with ``extensions`` in it (an empty set lists every file)."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(name, str(path or Path(folder_paths.models_dir) / name), is_default=True)
    if extensions:
        folder_paths.folder_names_and_paths[name][1].update(extensions)
