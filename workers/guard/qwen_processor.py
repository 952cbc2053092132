"""Loading a Qwen2.5-VL processor from a local checkpoint, also where torchvision is missing.

`AutoProcessor` builds Qwen2.5-VL's video processor, which needs torchvision. Guard inputs have no video,
so without torchvision an image-only processor is built from the same files: the Pillow image processor
and the checkpoint's tokenizer and chat template.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil


class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):  # type: ignore[misc]
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


def load_processor(path: Path) -> Any:
    if importlib.util.find_spec("torchvision") is not None:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        processor = ImageOnlyQwenProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=tokenizer.chat_template)
    processor.tokenizer.padding_side = "left"  # batched generation appends to the right
    return processor
