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


def list_preview(names: list[str], limit: int = 8) -> str:
    """The first few names of a list, for an error message."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def unlisted_file_error(node: str, value: str, listed: list[str], folders: list[str], fix: str) -> bool | str:
    """For a loader's ``validate_inputs``: True when ``value`` is one of the files the node offers, else the message
    ComfyUI shows when the prompt is queued (before anything loads), naming the file, the folders and the fix."""
    if value in listed:
        return True
    return (f"{node}: '{value}' is not among the files it can load in {folders} (found: {list_preview(listed)}). "
            f"{fix}")
