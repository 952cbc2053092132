"""`transformers serve`, unchanged but for its processor loader, for the openai backend's tests.

Its loader calls AutoProcessor, which for Qwen2.5-VL builds a video processor that needs torchvision;
torchvision is not installable beside this torch build. The loader is swapped for guardstream's
image-only one (the same files, no video); everything else is transformers' own server.
Usage: python -m tests.serve_tiny MODEL_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers.cli.serving import model_manager

from workers.guard.qwen_processor import load_processor


def _image_only(self: object, model_id_and_revision: str, gguf_file: str | None = None) -> object:
    return load_processor(Path(model_id_and_revision.split("@", 1)[0]))


if __name__ == "__main__":
    model_dir, port = sys.argv[1], sys.argv[2]
    model_manager.ModelManager._load_processor = _image_only  # type: ignore[method-assign]
    from transformers.cli.transformers import main

    sys.argv = ["transformers", "serve", model_dir, "--host", "127.0.0.1", "--port", port]
    main()
