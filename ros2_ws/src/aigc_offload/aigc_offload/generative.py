"""Real generative execution on an edge server: the cached ONNX models run with onnxruntime.

``GenerativeRunner.run(task, model_path)`` loads (once per file, verified against the cloud's
manifest sha256) a ``genmodels`` image or text model and generates the task's content: a defect
image with the task's denoising steps (PNG bytes), or a report of the task's token count (UTF-8).
The server still holds the task for its modeled compute time; the generation runs inside it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from .edge_core import KIND_IMAGE, EdgeTask


class GenerativeRunner:
    def __init__(self, cache_dir: Path, manifests: dict, threads: int = 1):
        import genmodels.runtime  # noqa: F401 - fail at configure when the runtime is missing

        self.cache_dir = Path(cache_dir)
        self.manifests = manifests
        self.threads = threads
        self._models: dict[Path, object] = {}

    def _open(self, task: EdgeTask, path: Path):
        from genmodels.runtime import ImageGenerator, TextGenerator

        model = self._models.get(path)
        if model is None:
            m = self.manifests.get(task.model_name)
            cls = ImageGenerator if task.task_kind == KIND_IMAGE else TextGenerator
            model = cls(path, sha256=getattr(m, "sha256", None), size_bytes=getattr(m, "size_bytes", None),
                        threads=self.threads)
            self._models = {p: mdl for p, mdl in self._models.items() if p.exists()}  # forget evicted files
            self._models[path] = model
        return model

    def run(self, task: EdgeTask, path: Path) -> tuple[bytes, str]:
        """Generate the task's content; returns (bytes, MIME type)."""
        model = self._open(task, path)
        seed = zlib.crc32(task.task_id.encode())  # reproducible per task
        if task.task_kind == KIND_IMAGE:
            image = model.generate(defect_class=seed % len(model.classes), steps=max(int(task.units), 1), seed=seed)
            return model.png(image), "image/png"
        try:
            text = model.generate(prompt=task.prompt or "", max_tokens=max(int(task.units), 1), seed=seed)
        except ValueError:  # words the small report models never saw: the prompt is a hint, write without it
            text = model.generate(prompt="", max_tokens=max(int(task.units), 1), seed=seed)
        return text.encode("utf-8"), "text/plain; charset=utf-8"
