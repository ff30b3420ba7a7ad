"""Lay folders out as a Hugging Face hub cache, so the studio's normal hub path loads them offline.

    add_repo(cache_dir, "segmind/Segmind-Vega", folder)   # models--segmind--Segmind-Vega/{refs,snapshots,blobs}
    HF_HUB_CACHE=cache_dir HF_HUB_OFFLINE=1 python -m studio generate --model vega ...

The layout is the one ``huggingface_hub`` writes: ``refs/main`` holds the commit, ``snapshots/<commit>/<path>`` are
symlinks to ``blobs/<sha256>``. The smoke test and the hub-path tests build their repos with it (no hub here).

``write_safetensors`` streams tensors to a .safetensors file one at a time (``safetensors.torch.save_file`` builds
the whole file in memory first: 10 GB for SDXL's UNet in fp16); with ``placeholder=True`` it writes the real header
and leaves the data as a sparse hole of zeros — a file of the real size that costs no disk, for repo files a test
must find but never read (if one is read, its weights are zero, which the smoke test would see).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
                      torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def repo_folder(cache_dir: str | Path, repo_id: str) -> Path:
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def add_repo(cache_dir: str | Path, repo_id: str, folder: str | Path, *, commit: str | None = None) -> Path:
    """Move every file of ``folder`` into the cache as repo ``repo_id`` at ``commit`` (default: derived from the
    repo id); returns the snapshot folder. ``folder`` is consumed (files are moved, not copied: they can be GBs)."""
    folder = Path(folder)
    repo = repo_folder(cache_dir, repo_id)
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / _etag(file)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if blob.exists():
            file.unlink()
        else:
            shutil.move(str(file), blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.rmtree(folder, ignore_errors=True)
    return snapshot


def _etag(file: Path) -> str:
    """The hub names LFS blobs by the sha256 of their content; for large weight files we hash the header and size
    instead (the name only has to be unique and stable here)."""
    digest = hashlib.sha256()
    size = file.stat().st_size
    with file.open("rb") as fh:
        if size <= 1 << 24:
            digest.update(fh.read())
        else:
            head = fh.read(8)
            digest.update(head + fh.read(int.from_bytes(head, "little")) + str(size).encode())
    return digest.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                      placeholder: bool = False, fill=None) -> int:
    """Write ``tensors`` as a .safetensors file, floating ones cast to ``dtype`` when given, one tensor at a time;
    returns the file size. The header comes from ``tensors`` (meta tensors are fine); the data from
    ``fill(name, tensor)`` when given (made on demand, so only one tensor is in memory), else from the tensors.
    ``placeholder``: the header only, the data left as a sparse hole of zeros."""
    def kind(t):
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    entries, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * torch.tensor([], dtype=kind(t)).element_size()
        entries[name] = {"dtype": SAFETENSORS_DTYPES[kind(t)], "shape": list(t.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        if placeholder:
            fh.truncate(8 + len(header) + offset)
        else:
            for name, t in tensors.items():
                data = (fill(name, t) if fill is not None else t).detach().to("cpu", kind(t)).contiguous().view(-1)
                if data.numel() != t.numel():
                    raise ValueError(f"write_safetensors: {name} has {data.numel()} values, header says {t.numel()}")
                fh.write(data.view(torch.uint8).numpy().data)
    return 8 + len(header) + offset
