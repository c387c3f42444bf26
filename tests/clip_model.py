"""A tiny CLIP model built here, for tests: no download, and a known answer.

Its two towers are random (a seeded, very small transformers ``CLIPConfig``); its two
projections are constructed so that the word ``COLOURS[i]`` and a solid image of that
colour both land exactly on basis vector ``i``: each projection solves ``W @ f_i = e_i``
for the towers' own features ``f_i`` by least squares, which is exact while the three
features are linearly independent. So "red" finds the red image, at cosine 1, and the
other colours at cosine 0, on any CPU. The model is saved as sentence-transformers saves
a CLIP model and loaded back by path, as a user's would be.
"""

from __future__ import annotations

import io
import string
from pathlib import Path

import numpy as np

COLOURS = ("red", "green", "blue")
PROJECTION = 8  # the width of the vectors
IMAGE_SIZE = 32


def encoded(colour: str | tuple[int, int, int], size: tuple[int, int] = (24, 24), fmt: str = "PNG") -> bytes:
    """A solid image of ``colour``, encoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def build_tiny_clip(folder: Path) -> Path:
    """Save the tiny CLIP model as a sentence-transformers model in ``folder``; returns it."""
    import torch
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:  # without torchvision, the PIL image processor (what transformers falls back to)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + " .,'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"{char}</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**small, "image_size": IMAGE_SIZE, "patch_size": 16},
        projection_dim=PROJECTION,
    )
    model = CLIPModel(config).eval()
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = CLIPProcessor(image_processor=ImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer)

    targets = torch.eye(PROJECTION)[:, : len(COLOURS)]  # column i: basis vector i
    with torch.no_grad():
        words = tokenizer(list(COLOURS), padding=True, return_tensors="pt")
        text_features = model.text_model(**words).pooler_output  # (3, hidden)
        pictures = processor(images=[Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), c) for c in COLOURS])
        pixels = torch.as_tensor(np.asarray(pictures["pixel_values"]))
        image_features = model.vision_model(pixel_values=pixels).pooler_output
        model.text_projection.weight.copy_(targets @ torch.linalg.pinv(text_features.T))
        model.visual_projection.weight.copy_(targets @ torch.linalg.pinv(image_features.T))

    hugging_face = folder / "hf"
    processor.save_pretrained(hugging_face)
    model.save_pretrained(hugging_face)
    saved = folder / "tiny-clip"
    SentenceTransformer(modules=[Transformer(str(hugging_face))], device="cpu").save(str(saved))
    return saved
