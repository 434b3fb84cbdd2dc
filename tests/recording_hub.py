"""A stand-in for ``huggingface_hub.HfApi`` (no Hub on test machines): records what a push would send."""

from __future__ import annotations

from pathlib import Path


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records what would be sent, copies the folder."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(
            (
                "upload_folder",
                {**kwargs, "files": sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())},
            )
        )
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"
