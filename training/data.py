"""Training data: captioned images from an imagefolder, the demo generator or a `datasets` Dataset; aspect buckets;
SDXL-ready batches (VAE latents, two-encoder text embeddings, time ids) with optional caching.

    items = load_items("data/train")                      # imagefolder with metadata.jsonl (file_name, text)
    items = load_items("demo", count=512, size=64)        # studio.demo.shapes (demo:orange: a new concept)
    batches = SDXLBatches(items, pipe, buckets=[(64, 64)], cache_latents=True, cache_text=True)
    batch = batches.batch(batches.generator(seed, step, micro), batch_size=8)

Buckets: each image goes to the bucket of nearest aspect ratio (log scale), is resized to cover it and centre
cropped; a batch is drawn from one bucket (chosen in proportion to its size), so shapes within a batch agree.
A batch is a pure function of the generator, so seeding it with (seed, step, micro) makes runs resumable exactly.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.demo import concepts, shapes


@dataclass(frozen=True)
class ImageCaption:
    """One training pair; ``image`` is a PIL image or a path opened on use."""

    image: Image.Image | Path
    text: str

    def load(self) -> Image.Image:
        return (Image.open(self.image) if isinstance(self.image, Path) else self.image).convert("RGB")

    @property
    def size(self) -> tuple[int, int]:
        if isinstance(self.image, Path):
            with Image.open(self.image) as im:
                return im.size
        return self.image.size


# ---------------------------------------------------------------- sources

def load_imagefolder(folder: str | Path, caption_column: str = "text") -> list[ImageCaption]:
    """Pairs from ``metadata.jsonl`` (one ``{"file_name": ..., "<caption_column>": ...}`` per line)."""
    root = Path(folder)
    meta = root / "metadata.jsonl"
    if not meta.exists():
        raise ValueError(f"{root}: no metadata.jsonl (imagefolder format: file_name + {caption_column} per line)")
    items = []
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row or caption_column not in row:
            raise ValueError(f"{meta}:{n}: needs 'file_name' and '{caption_column}'; got keys {sorted(row)}")
        path = root / row["file_name"]
        if not path.exists():
            raise ValueError(f"{meta}:{n}: image {row['file_name']!r} does not exist")
        text = row[caption_column]
        items.append(ImageCaption(path, text if isinstance(text, str) else str(text[0])))
    if not items:
        raise ValueError(f"{meta}: no rows")
    return items


def demo_items(count: int, *, size: int = 64, seed: int = 0) -> list[ImageCaption]:
    """``count`` samples of the synthetic shapes train split (``studio.demo.shapes``)."""
    cfg = shapes.SyntheticConfig(seed=seed, size=size, count=count, split="train")
    return [ImageCaption(s.image, s.text) for s in shapes.samples(cfg)]


DEMO_CONCEPT_COUNTS = (256, 256)  # "demo:<concept>" datasets: concept images, original (prior-preservation) images


def concept_items(concept: str, *, size: int = 64) -> list[ImageCaption]:
    """A ``"demo:<concept>"`` dataset: ``studio.demo.concepts`` images of the concept plus original train-split
    images (prior preservation by data mixing), generated in memory exactly as ``concepts.export_concept_data``
    writes them."""
    count, reg_count = DEMO_CONCEPT_COUNTS
    return [ImageCaption(image, meta["text"])
            for _, image, meta in concepts.concept_records(count, concept, reg_count=reg_count, size=size)]


def hf_items(dataset, *, image_column: str = "image", caption_column: str = "text") -> list[ImageCaption]:
    """Pairs from a Hugging Face ``datasets.Dataset`` (columns chosen by name, never by position)."""
    missing = [c for c in (image_column, caption_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; columns: {dataset.column_names}")
    return [ImageCaption(row[image_column], row[caption_column]) for row in dataset]


def load_items(source, *, count: int = 0, size: int = 64, seed: int = 0,
               caption_column: str = "text") -> list[ImageCaption]:
    """``"demo"`` (synthetic, ``count`` images of side ``size``), ``"demo:<concept>"`` (``concept_items``), an
    imagefolder path, ``"hf:<name or path>"`` (needs the optional ``datasets`` package), a ``datasets.Dataset``, or a
    list of ImageCaption."""
    if isinstance(source, list):
        return source
    if not isinstance(source, (str, Path)):
        return hf_items(source, caption_column=caption_column)
    if str(source) == "demo":
        return demo_items(count, size=size, seed=seed)
    if str(source).startswith("demo:"):
        return concept_items(str(source)[5:], size=size)
    if str(source).startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise ValueError("dataset 'hf:...' needs the optional 'datasets' package (pip install datasets)") from None
        name = str(source)[3:]
        ds = (datasets.load_dataset("imagefolder", data_dir=name, split="train") if Path(name).is_dir()
              else datasets.load_dataset(name, split="train"))
        return hf_items(ds, caption_column=caption_column)
    return load_imagefolder(source, caption_column)


# ---------------------------------------------------------------- buckets

def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> int:
    """Index of the (width, height) bucket whose aspect ratio is nearest (in log scale) to ``size``'s."""
    ratio = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - ratio))


def to_pixels(image: Image.Image, bucket: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float in [-1, 1]: resize to cover ``bucket`` (w, h), centre crop."""
    w, h = bucket
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    im = image.resize((rw, rh), Image.BICUBIC) if (rw, rh) != image.size else image
    left, top = (rw - w) // 2, (rh - h) // 2
    im = im.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


def sdxl_time_ids(bucket: tuple[int, int], batch: int) -> torch.Tensor:
    """SDXL add_time_ids (original size, crop top-left, target size; sizes as (h, w)) for centre-cropped images."""
    w, h = bucket
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(batch, 1)


# ---------------------------------------------------------------- SDXL batches

class SDXLBatches:
    """Model-ready batches for an SDXL-layout pipeline (its VAE and text encoders stay frozen).

    Args:
        items (`list[ImageCaption]`): the training pairs.
        pipe (`StableDiffusionXLPipeline`): supplies ``vae`` and ``encode_prompt``.
        buckets (`list[tuple[int, int]]`): (width, height) training resolutions.
        cache_latents / cache_text (`bool`): encode every image / caption once up front (in memory).
        cache_dir (`str`, *optional*): also keep the latent cache on disk, keyed by a fingerprint of the VAE,
            buckets and items.
        caption_dropout (`float`): share of rows whose text conditioning is zeroed (the pipeline's unconditional
            input, ``force_zeros_for_empty_prompt``), so the model keeps working with CFG.
        device (`torch.device`): where batches are returned.
    """

    def __init__(self, items: list[ImageCaption], pipe, *, buckets: list[tuple[int, int]], cache_latents: bool = False,
                 cache_text: bool = False, cache_dir: str | None = None, caption_dropout: float = 0.0,
                 device: torch.device | str = "cpu"):
        self.items, self.pipe, self.buckets = items, pipe, [tuple(b) for b in buckets]
        self.caption_dropout, self.device = caption_dropout, torch.device(device)
        self.by_bucket: list[list[int]] = [[] for _ in self.buckets]
        for i, item in enumerate(items):
            self.by_bucket[nearest_bucket(item.size, self.buckets) if len(self.buckets) > 1 else 0].append(i)
        self.sizes = torch.tensor([len(b) for b in self.by_bucket], dtype=torch.float64)
        self._latents: dict[int, torch.Tensor] | None = None
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if cache_latents:
            self._latents = self._cached_latents(cache_dir)
        if cache_text:
            self._text = self._cached_text(cache_dir)

    @staticmethod
    def generator(seed: int, step: int, micro: int = 0, process: int = 0) -> torch.Generator:
        """The generator of one micro-batch: a pure function of (seed, step, micro, process)."""
        state = np.random.SeedSequence([seed, step, micro, process]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    @torch.no_grad()
    def _encode_images(self, idx: list[int], bucket: tuple[int, int]) -> torch.Tensor:
        vae = self.pipe.vae
        px = torch.stack([to_pixels(self.items[i].load(), bucket) for i in idx]).to(vae.device, vae.dtype)
        return (vae.encode(px).latent_dist.mean * vae.config.scaling_factor).float().cpu()

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and pooled embeddings through the pipeline's own ``encode_prompt`` (as the teacher was trained)."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(captions, device=self.pipe.text_encoder.device,
                                                       do_classifier_free_guidance=False)
        return embeds.cpu(), pooled.cpu()  # in the encoders' dtype (fp16 on a GPU); batches are made fp32

    def _fingerprint(self) -> str:
        h = _modules_hash([self.pipe.vae])
        h.update(json.dumps(self.buckets).encode())
        for it in self.items:
            h.update(f"{it.image if isinstance(it.image, Path) else it.image.tobytes()[:4096]!r}|{it.text}".encode())
        return h.hexdigest()[:16]

    def _cached_text(self, cache_dir: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Caption -> (embeds, pooled), each caption encoded once. With ``cache_dir`` the cache is a file keyed by
        the text encoders and captions, memory-mapped on reuse, so a large caption set need not fit in RAM."""
        texts = sorted({it.text for it in self.items})
        h = _modules_hash([self.pipe.text_encoder, self.pipe.text_encoder_2])
        h.update(json.dumps(texts).encode())
        path = Path(cache_dir) / f"text-{h.hexdigest()[:16]}.pt" if cache_dir else None
        if path is not None and path.exists():
            data = torch.load(path, mmap=True)
        else:
            chunks = [self._encode_text(texts[k:k + 64]) for k in range(0, len(texts), 64)]
            data = {"texts": texts, "embeds": torch.cat([c[0] for c in chunks]),
                    "pooled": torch.cat([c[1] for c in chunks])}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(data, path.with_suffix(".tmp"))
                path.with_suffix(".tmp").rename(path)
        return {t: (data["embeds"][i], data["pooled"][i]) for i, t in enumerate(data["texts"])}

    def _cached_latents(self, cache_dir: str | None) -> dict[int, torch.Tensor]:
        path = Path(cache_dir) / f"latents-{self._fingerprint()}.pt" if cache_dir else None
        if path is not None and path.exists():
            return torch.load(path)
        out = {}
        for b, idx in enumerate(self.by_bucket):
            for k in range(0, len(idx), 32):
                chunk = idx[k:k + 32]
                out.update(zip(chunk, self._encode_images(chunk, self.buckets[b])))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, path)
        return out

    def batch(self, gen: torch.Generator, batch_size: int) -> dict:
        """``latents`` (B, C, h, w), ``prompt_embeds``, ``pooled``, ``time_ids``, ``captions`` and ``indices`` (into
        ``items``) for one micro-batch."""
        b = int(torch.multinomial(self.sizes, 1, generator=gen)) if len(self.buckets) > 1 else 0
        pool = self.by_bucket[b]
        idx = [pool[int(k)] for k in torch.randint(len(pool), (batch_size,), generator=gen)]
        captions = [self.items[i].text for i in idx]
        drop = torch.rand(batch_size, generator=gen) < self.caption_dropout
        if self._latents is not None:
            latents = torch.stack([self._latents[i] for i in idx])
        else:
            latents = self._encode_images(idx, self.buckets[b])
        if self._text is not None:
            embeds = torch.stack([self._text[c][0] for c in captions])
            pooled = torch.stack([self._text[c][1] for c in captions])
        else:
            embeds, pooled = self._encode_text(captions)
        keep = (~drop).float()
        embeds, pooled = embeds.float() * keep[:, None, None], pooled.float() * keep[:, None]
        dev = self.device
        return {"latents": latents.to(dev), "prompt_embeds": embeds.to(dev), "pooled": pooled.to(dev),
                "time_ids": sdxl_time_ids(self.buckets[b], batch_size).to(dev), "captions": captions, "indices": idx}


def _modules_hash(modules) -> "hashlib._Hash":
    """A fingerprint of frozen modules: their configs and the sum of every parameter (cheap, changes with weights)."""
    h = hashlib.sha256()
    for m in modules:
        h.update(json.dumps({k: v for k, v in m.config.items() if not k.startswith("_")} if hasattr(m.config, "items")
                            else m.config.to_dict(), sort_keys=True, default=str).encode())
        for p in m.parameters():
            h.update(np.float64(p.detach().double().sum().item()).tobytes())
    return h


def add_training_noise(latents: torch.Tensor, noise_sched, gen: torch.Generator, *, noise_offset: float = 0.0,
                       device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, regression target) for one batch, drawn from ``gen`` so batches replay exactly.

    Offset noise adds a per-channel constant; the target is the noise, or the velocity for v-prediction models.
    """
    b = len(latents)
    noise = torch.randn(latents.shape, generator=gen)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen)
    noise, t = noise.to(device or latents.device), t.to(device or latents.device)
    noisy = noise_sched.add_noise(latents, noise, t)
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    return noisy, t, (noise_sched.get_velocity(latents, noise, t) if v_pred else noise)

