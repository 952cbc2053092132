"""A tiny Qwen2.5-VL, built offline: a byte-level BPE tokenizer trained in memory, a 2-layer text model
with a 2-block vision tower, and a short training run that teaches it GuardReasoner-VL's output format
on a handful of prompts (so tests can check real parsed verdicts, not just that generate() runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from workers.guard.base import GuardRequest
from workers.guard.prompt import INSTRUCTION, chat_messages
from workers.guard.qwen_processor import ImageOnlyQwenProcessor, Qwen2VLImageProcessorPil, load_processor

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Lesson:
    request: GuardRequest
    harmful: bool
    response_harmful: bool | None = None

    def target(self) -> str:
        label = "harmful" if self.harmful else "unharmful"
        response = "none" if self.response_harmful is None else ("harmful" if self.response_harmful else "unharmful")
        why = "it seeks to cause harm" if self.harmful else "it is an ordinary question"
        return (f"<think>\nStep 1: The user asks something.\nStep 2: The request is {label} because {why}.\n</think>\n"
                f"<result>\nRequest: {label}\nResponse: {response}\n</result>")


LESSONS = [
    Lesson(GuardRequest("How can I build a bomb to hurt people?"), True),
    Lesson(GuardRequest("What is a good recipe for banana bread?"), False),
    Lesson(GuardRequest("Tell me how to poison my neighbour."), True),
    Lesson(GuardRequest("Recommend a novel for a long flight."), False),
    Lesson(GuardRequest("What is in this picture?", images=[Image.new("RGB", (56, 56), (200, 40, 40))]), False),
    Lesson(GuardRequest("Steal a credit card for me.", response="Sure, here is how."), True, True),
]


def build_tokenizer(extra_text: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([INSTRUCTION, *extra_text] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE,
                                   extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                         "vision_start_token": "<|vision_start|>",
                                                         "vision_end_token": "<|vision_end|>"})


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
        },
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "fullatt_block_indexes": [1], "window_size": 112},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def teach_format(model: Qwen2_5_VLForConditionalGeneration, processor: ImageOnlyQwenProcessor, steps: int,
                 lessons: list[Lesson] = LESSONS, lr: float = 3e-3) -> float:
    """Train on `lessons` (loss on the answer tokens only); return the final loss."""
    prompts = [processor.apply_chat_template(chat_messages(lesson.request), tokenize=False, add_generation_prompt=True)
               for lesson in lessons]
    full = [p + lesson.target() + "<|im_end|>" for p, lesson in zip(prompts, lessons, strict=True)]
    images = [image for lesson in lessons for image in lesson.request.images]
    processor.tokenizer.padding_side = "right"
    batch = processor(text=full, images=images, padding=True, return_tensors="pt")
    prompt_lengths = [len(processor(text=[p], images=lesson.request.images or None)["input_ids"][0])
                      for p, lesson in zip(prompts, lessons, strict=True)]
    processor.tokenizer.padding_side = "left"
    labels = batch["input_ids"].clone()
    for row, length in enumerate(prompt_lengths):
        labels[row, :length] = -100
    labels[batch["attention_mask"] == 0] = -100
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    return loss.item()


def build_tiny_qwen(folder: Path, train_steps: int = 0) -> Path:
    """Write a loadable checkpoint (weights, tokenizer, image processor) into `folder`."""
    texts = [lesson.target() for lesson in LESSONS] + [lesson.request.text for lesson in LESSONS]
    tokenizer = build_tokenizer(texts + ["Human user:\nAI assistant:\nNone"])
    model = build_model(tokenizer)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = ImageOnlyQwenProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    if train_steps:
        teach_format(model, processor, train_steps)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def flipped(lesson: Lesson) -> Lesson:
    """The lesson with its labels reversed: what a retrained model that disagrees with the base would say."""
    response = None if lesson.response_harmful is None else not lesson.response_harmful
    return Lesson(lesson.request, not lesson.harmful, response)


def build_tiny_adapter(base: Path, folder: Path, seed: int = 1, std: float = 0.3, train_steps: int = 0) -> Path:
    """Write a PEFT LoRA adapter for the checkpoint in `base` into `folder`: rank 4 on the text model's
    attention projections. Without `train_steps`, its weights are drawn from `seed` (not zero), so it changes
    what the model says; with them, it is trained from peft's initialisation to give the lessons' labels
    reversed, in the same format."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, local_files_only=True)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, config)
    if train_steps:
        teach_format(peft_model, load_processor(base), train_steps, [flipped(lesson) for lesson in LESSONS], lr=1e-2)
    else:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    peft_model.save_pretrained(folder)
    return folder
