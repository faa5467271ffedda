"""Tiny model: writes a Stable Diffusion pipeline with random weights, small enough for tests (a 64×64 image in
about 0.1 s on one core), and computes the catalog's hash of a model folder.

    python3 make_tiny.py OUT                     # build it here (needs torch + diffusers: run it in the image)
    python workloads/sd-diffusers/make_tiny.py --via-docker [--out DIR]   # build it in archipelag/sd-diffusers:1
    python workloads/sd-diffusers/make_tiny.py --hash FOLDER              # print a folder's catalog hash

The pipeline is built from configs (UNet2DConditionModel, AutoencoderKL with the usual 8× downscale, a
CLIPTextModel, a CLIPTokenizer over a hand-written byte-level vocabulary, DDIMScheduler) under a fixed torch
seed and saved with ``save_pretrained``, so it loads offline (``local_files_only=True``) and the same
torch/diffusers/transformers versions write the same bytes. ``--via-docker`` runs this file inside the built
image with no network and moves the result into place only when its hash is the one ``manifest.toml`` pins; it
does nothing when the folder already has that hash. A folder's hash is the catalog's (``archipelag.catalog``):
SHA-256 over the sorted lines ``"<relative path>\\0<sha256 of the file>\\n"``, paths with '/'.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE = "archipelag/sd-diffusers:1"
DEFAULT_OUT = Path.home() / ".cache" / "archipelag" / "models" / "sd-tiny"
SEED = 20260101
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """The catalog's hash of a model folder: SHA-256 over its files' sorted ``"path\\0sha256\\n"`` lines."""
    lines = sorted(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n"
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def pinned_sha256() -> str:
    """The hash ``manifest.toml`` pins for sd-tiny."""
    with (HERE / "manifest.toml").open("rb") as fh:
        return str(tomllib.load(fh)["model"]["sha256"])


# --- the pipeline (runs where torch and diffusers are importable) ---------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet: every byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level CLIP vocabulary: every byte alone and word-final, a few merges, the two special tokens."""
    alphabet = list(_bytes_to_unicode().values())
    merges = [("a", "t"), ("t", "h"), ("th", "e</w>"), ("i", "n"), ("o", "n</w>"), ("e", "r"), ("a", "n"),
              ("o", "r</w>"), ("c", "a"), ("a", "t</w>")]
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet),
              *("".join(pair) for pair in merges)]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}, merges


def build_pipeline() -> object:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    vocab, merges = clip_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def make(out: Path) -> str:
    """Write the tiny pipeline into ``out`` (emptied first); its folder hash."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if out.exists():
        shutil.rmtree(out)
    build_pipeline().save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]
    for path in [out, *out.rglob("*")]:  # the sandbox reads it as another user; safetensors are written 0600
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder_sha256(out)


# --- in the image ------------------------------------------------------------------------------------


def make_via_docker(out: Path) -> str:
    """Build the pipeline in the sd-diffusers image, without network; move it to ``out`` when its hash is the
    pinned one. Nothing to do when ``out`` already has that hash."""
    expected = pinned_sha256()
    if out.is_dir() and folder_sha256(out) == expected:
        return expected
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode != 0:
        raise SystemExit(f"{IMAGE} is not built; run `.venv/bin/python workloads/build_containers.py sd-diffusers`")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,size=256m,mode=1777",
             "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp", "-e", "HF_HOME=/tmp/hf",
             "-v", f"{scratch}:/out", "--entrypoint", "python3", IMAGE, "/app/make_tiny.py", "/out/sd-tiny"],
            check=True, stdout=sys.stderr)
        made = scratch / "sd-tiny"
        found = folder_sha256(made)
        if found != expected:
            raise SystemExit(f"the tiny model built in {IMAGE} hashes to {found}, but manifest.toml pins "
                             f"{expected}; if torch/diffusers/transformers changed on purpose, pin the new hash "
                             f"(and re-sign the catalog)")
        shutil.rmtree(out, ignore_errors=True)
        made.rename(out)
        return found
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="where to write the pipeline (in-process build)")
    parser.add_argument("--out", type=Path, help=f"where to write it (default {DEFAULT_OUT})")
    parser.add_argument("--via-docker", action="store_true", help=f"build it inside {IMAGE}, offline")
    parser.add_argument("--hash", type=Path, metavar="FOLDER", help="print FOLDER's catalog hash and exit")
    args = parser.parse_args()
    if args.hash is not None:
        if not args.hash.is_dir():
            raise SystemExit(f"{args.hash} is not a folder")
        print(folder_sha256(args.hash))
        return
    out = (args.out or args.folder or DEFAULT_OUT).expanduser()
    digest = make_via_docker(out) if args.via_docker else make(out)
    print(f"{digest}  {out}")


if __name__ == "__main__":
    main()
