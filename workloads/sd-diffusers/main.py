"""sd-diffusers: text to image with a diffusers pipeline (Stable Diffusion 1.x/2.x, SDXL, the tiny test model).

Input  {"prompt": str, "negative_prompt"?: str, "width"?: int, "height"?: int (64-1024, multiples of 8; default
       the model's native size), "steps"?: 1-100 (default 20), "guidance_scale"?: 0-20 (default 7.5),
       "seed"?: 0 to 2^32-1 (random when absent)}
Events status "loading model" (the first request of a worker), progress {step, total} per denoising step,
       one image {data (base64 PNG), format: "png", width, height}, then done {seed} (the job's `output` is then
       {"image_data", "format", "width", "height", "seed"}, DESIGN §8).

The model is the diffusers folder the host mounted read-only at ``$ARCHIPELAG_MODEL`` (its hash checked against
the catalog before the container started); the pipeline class comes from its ``model_index.json``, weights are
read from safetensors only (a pickle is never loaded), and nothing is written but to /tmp. In worker mode the
pipeline is loaded once and serves request after request; ``cancelled()`` is polled after every step.
Threads: ``$ARCHIPELAG_THREADS``; the GPU (float16) when ``$ARCHIPELAG_GPU=1`` and torch sees one.
Input is checked before the model is touched, so bad input fails fast and without torch.
"""

from __future__ import annotations

import base64
import io
import os
import random
from pathlib import Path
from typing import Any

from workload_io import (
    LINE_LIMIT_BYTES,
    Cancelled,
    Done,
    InputError,
    cancelled,
    emit,
    int_field,
    number_field,
    serve,
    text_field,
)

MAX_INPUT_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens; a longer text is cut by the tokenizer, a far longer one refused
MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 1024, 8
MAX_STEPS = 100
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
# where libraries may write: the root file system is read-only and the model mount too; /tmp is a tmpfs
SCRATCH_ENV = {"HF_HOME": "/tmp/hf", "XDG_CACHE_HOME": "/tmp/cache", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
               "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

_pipeline: Any = None


def side_field(job: dict[str, Any], name: str) -> int | None:
    """An image side: a multiple of 8 from 64 to 1024, or None (the model's native size)."""
    value = int_field(job, name, None, MIN_SIDE, MAX_SIDE)
    if value is not None and value % SIDE_STEP:
        raise InputError(f"field {name!r} must be a multiple of {SIDE_STEP} (the latent grid), not {value}; "
                         f"try {value - value % SIDE_STEP or SIDE_STEP} or {value - value % SIDE_STEP + SIDE_STEP}")
    return value


def parameters(job: dict[str, Any]) -> dict[str, Any]:
    """Everything but the model: checked before the model is touched, so bad input fails fast."""
    prompt = text_field(job, "prompt")
    negative = text_field(job, "negative_prompt", required=False, allow_empty=True)
    for name, text in (("prompt", prompt or ""), ("negative_prompt", negative or "")):
        if len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"field {name!r} is {len(text)} characters, past the limit of {MAX_PROMPT_CHARS}")
    seed = int_field(job, "seed", None, 0, MAX_SEED)
    return {
        "prompt": prompt,
        "negative_prompt": negative or None,
        "width": side_field(job, "width"),
        "height": side_field(job, "height"),
        "steps": int_field(job, "steps", DEFAULT_STEPS, 1, MAX_STEPS),
        "guidance_scale": number_field(job, "guidance_scale", DEFAULT_GUIDANCE, 0.0, MAX_GUIDANCE),
        "seed": random.randint(0, MAX_SEED) if seed is None else seed,
    }


def native_side(pipeline: Any) -> int:
    """The side the model was trained at (SD 1.5: 512, SDXL: 1024), within this workload's bounds."""
    side = int(pipeline.unet.config.sample_size) * int(getattr(pipeline, "vae_scale_factor", 8))
    return min(MAX_SIDE, max(MIN_SIDE, side - side % SIDE_STEP))


def load_pipeline() -> Any:
    """The pipeline, loaded on first use and kept (worker mode serves many requests with it)."""
    global _pipeline
    if _pipeline is None:
        folder = Path(os.environ.get("ARCHIPELAG_MODEL", ""))
        if not (folder / "model_index.json").is_file():
            raise RuntimeError("no model mounted: ARCHIPELAG_MODEL does not name a diffusers folder")
        emit("status", message="loading model")
        for name, value in SCRATCH_ENV.items():
            os.environ.setdefault(name, value)
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        torch.set_num_threads(max(1, int(os.environ.get("ARCHIPELAG_THREADS", "1"))))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set: only possible before the first parallel work
        gpu = os.environ.get("ARCHIPELAG_GPU") == "1" and torch.cuda.is_available()
        fp16 = gpu and any(folder.glob("unet/*.fp16.safetensors"))
        pipeline = DiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True,
            dtype=torch.float16 if gpu else torch.float32, variant="fp16" if fp16 else None)
        pipeline.set_progress_bar_config(disable=True)
        _pipeline = pipeline.to("cuda" if gpu else "cpu")
    return _pipeline


def png_of(image: Any) -> str:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False)
    encoded = base64.b64encode(out.getvalue()).decode("ascii")
    if len(encoded) > LINE_LIMIT_BYTES - 1024:
        raise InputError(f"the {image.width}×{image.height} image is {len(encoded)} bytes as base64 PNG, past the "
                         f"{LINE_LIMIT_BYTES}-byte event limit; ask for a smaller width or height")
    return encoded


def handle(job: dict[str, Any]) -> Done:
    params = parameters(job)
    pipeline = load_pipeline()
    import torch

    side = native_side(pipeline)
    width, height = params["width"] or side, params["height"] or side
    emit("status", message=f"generating {width}×{height}, {params['steps']} steps")

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        emit("progress", step=step + 1, total=int(getattr(pipe, "num_timesteps", 0) or params["steps"]))
        if cancelled():
            raise Cancelled
        return tensors

    if cancelled():
        raise Cancelled
    with torch.inference_mode():
        result = pipeline(
            prompt=params["prompt"], negative_prompt=params["negative_prompt"], width=width, height=height,
            num_inference_steps=params["steps"], guidance_scale=params["guidance_scale"],
            generator=torch.Generator("cpu").manual_seed(params["seed"]), output_type="pil",
            callback_on_step_end=on_step_end)
    image = result.images[0]
    emit("image", data=png_of(image), format="png", width=image.width, height=image.height)
    return Done(seed=params["seed"])  # the job's output is built from the image event and this seed


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
