"""Loading NemotronH decoders from released or `save_pretrained` checkpoints.

This is the one place that maps checkpoint names to model names. The model's modules are
named as the released checkpoints name them, so the mapping is only about prefixes:

    text checkpoint (NemotronHForCausalLM)   backbone.* / lm_head.weight / mtp.*
    Omni or VL checkpoint                     language_model.backbone.* / language_model.lm_head.weight /
                                              language_model.mtp.*   (other towers are not the decoder's)

Safetensors only, single file or sharded with `model.safetensors.index.json`. Each file's
header is parsed and checked here (sizes, offsets, dtypes) before anything is allocated, then
the file is memory-mapped. On the CPU every tensor is copied (converted if asked) into one
block of fresh memory on 2 MB pages where the kernel grants them, and its source pages are
released as it goes, so peak memory stays near the size of the weights: decoding streams every
weight once per token, and that stream is faster from huge anonymous pages than from the
file's 4 KB page-cache pages (7% per decoded token on the 189M bench model). A missing,
unexpected or mis-shaped tensor is an error that names the key and the shapes.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from .config import DecoderConfig, read_config_json
from .model import NemotronH

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 << 20          # a header larger than this is not a real checkpoint's
_KEEP_FP32 = ("gate.weight", "gate.e_score_correction_bias")  # the router runs in fp32


class LoadError(ValueError):
    """A checkpoint that cannot be loaded: says which file, which key and why."""


class SafetensorsFile:
    """A memory-mapped .safetensors file with a validated header."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoadError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise LoadError(f"{path}: header length {n} does not fit the file ({size} bytes); not safetensors?")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise LoadError(f"{path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise LoadError(f"{path}: header is not a JSON object")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, e in header.items():
            try:
                dtype_name, shape, (start, end) = e["dtype"], e["shape"], e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise LoadError(f"{path}: tensor {key!r} has a malformed header entry {e!r}") from None
            if dtype_name not in _DTYPES:
                raise LoadError(f"{path}: tensor {key!r} has dtype {dtype_name}, which this loader does not "
                                f"read (supported: {', '.join(_DTYPES)}); FP8/FP4 checkpoints need the BF16 release")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise LoadError(f"{path}: tensor {key!r} has an invalid shape {shape!r}")
            dtype = _DTYPES[dtype_name]
            nbytes = math.prod(shape) * dtype.itemsize
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len
                    and end - start == nbytes):
                raise LoadError(f"{path}: tensor {key!r} claims bytes {start}..{end} for shape {shape} "
                                f"{dtype_name} ({nbytes} bytes) in {data_len} bytes of data")
            self.entries[key] = (dtype, tuple(shape), start, end)
        self._mm = None

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][1]

    def _view(self, key: str) -> tuple[torch.Tensor, int, int]:
        """`key` as stored (a view into the mapping, or a copy of misaligned bytes), its offset
        in the file and its length in bytes."""
        src_dtype, shape, start, end = self.entries[key]
        if self._mm is None:
            with open(self.path, "rb") as f:   # copy-on-write: writable tensors, the file never changes
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        offset = self.data_start + start
        count = (end - start) // src_dtype.itemsize
        if count == 0:
            return torch.empty(shape, dtype=src_dtype), offset, 0
        if offset % src_dtype.itemsize:   # misaligned: copy the bytes
            t = torch.frombuffer(bytearray(self._mm[offset:offset + end - start]), dtype=src_dtype)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.frombuffer(self._mm, dtype=src_dtype, count=count, offset=offset)
        return t.view(shape), offset, end - start

    def copy_into(self, key: str, out: torch.Tensor) -> None:
        """Copy (and convert) `key` into `out`, then release its source pages."""
        t, offset, length = self._view(key)
        out.copy_(t)
        self._release(offset, length)

    def tensor(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key`, as a view into the mapping when no conversion is needed (weights that
        compute on the CPU are copied into `load_weights`' aligned block instead)."""
        t, offset, length = self._view(key)
        if dtype is not None and dtype != t.dtype:
            t = t.to(dtype)
            self._release(offset, length)
        return t

    def _release(self, offset: int, length: int) -> None:
        """Drop the mapped source pages of a converted tensor from memory (they are clean copies
        of the file, so the kernel can re-read them if ever touched again)."""
        page = mmap.PAGESIZE
        lo, hi = -(-offset // page) * page, (offset + length) // page * page
        if hi > lo and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


_HUGE_PAGE = 2 << 20


def _arena(nbytes: int) -> torch.Tensor:
    """`nbytes` of fresh anonymous memory (uint8), 2 MB aligned and advised to the kernel as
    huge-page memory (a no-op where transparent huge pages are off). Pages become resident as
    they are first written."""
    m = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    t = torch.frombuffer(m, dtype=torch.uint8)
    start = (-t.data_ptr()) % _HUGE_PAGE
    return t[start:start + nbytes]


def open_checkpoint(model_dir: str | Path) -> dict[str, SafetensorsFile]:
    """Every tensor key of a checkpoint folder -> the file that holds it."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LoadError(f"{index}: not a safetensors index ({e})") from None
        files: dict[str, SafetensorsFile] = {}
        out = {}
        for key, name in weight_map.items():
            if os.path.basename(name) != name or not name.endswith(".safetensors"):
                raise LoadError(f"{index}: shard name {name!r} for {key!r} must be a .safetensors file in the folder")
            if name not in files:
                if not (model_dir / name).exists():
                    raise LoadError(f"{index}: shard {name} (holding {key!r}) is missing from {model_dir}")
                files[name] = SafetensorsFile(model_dir / name)
            if key not in files[name].entries:
                raise LoadError(f"{index}: says {key!r} is in {name}, but that file does not hold it")
            out[key] = files[name]
        return out
    single = model_dir / "model.safetensors"
    if single.exists():
        f = SafetensorsFile(single)
        return {k: f for k in f.entries}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise LoadError(f"{model_dir}: only pickle weights (.bin/.pt) found; omnistream loads safetensors only")
    raise LoadError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def decoder_prefix(raw_config: dict) -> str:
    """Where the decoder's tensors live: under `language_model.` in Omni / VL checkpoints."""
    return "language_model." if ("text_config" in raw_config or "llm_config" in raw_config) else ""


def checkpoint_dtype(raw: dict) -> torch.dtype | None:
    for d in (raw.get("text_config"), raw.get("llm_config"), raw):
        if isinstance(d, dict):
            name = d.get("dtype") or d.get("torch_dtype")
            if isinstance(name, str) and hasattr(torch, name.replace("torch.", "")):
                return getattr(torch, name.replace("torch.", ""))
    return None


def load_weights(model: torch.nn.Module, tensors: dict[str, SafetensorsFile], prefix: str,
                 dtype: torch.dtype, device: str = "cpu", *, where: str = "checkpoint",
                 keep_fp32: tuple[str, ...] = (), skip=None, rename=None) -> torch.nn.Module:
    """Fill `model` (built on the meta device) with the checkpoint tensors under `prefix`.

    Every tower of every checkpoint loads through here. Module names equal the checkpoint names
    after `prefix`, except where `rename(name) -> name` maps them (the one exception list of a
    tower). Tensors whose names end with one of `keep_fp32` stay fp32; `skip(name)` drops
    tensors that are present but not wanted. Shapes are checked against the model before any
    tensor is read; a missing, unexpected or mis-shaped tensor raises LoadError naming it.
    """
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    ours = {}
    for key in tensors:
        if not key.startswith(prefix):
            continue                       # another tower's tensor
        name = key[len(prefix):]
        if rename is not None:
            name = rename(name)
            if name is None:
                continue                   # a tensor the tower deliberately ignores
        if skip is not None and skip(name):
            continue
        if name not in expected:
            raise LoadError(f"{where}: unexpected tensor {key!r} with shape {list(tensors[key].shape(key))} "
                            f"(the config describes no such weight)")
        ours[name] = key
    for name, shape in expected.items():
        if name not in ours:
            raise LoadError(f"{where}: missing tensor {prefix + name!r} (expected shape {list(shape)})")
        got = tensors[ours[name]].shape(ours[name])
        if got != shape:
            raise LoadError(f"{where}: tensor {ours[name]!r} has shape {list(got)}, the config expects {list(shape)}")

    state = {}
    want = {name: torch.float32 if name.endswith(keep_fp32) else dtype for name in ours}
    if device == "cpu":            # one block of fresh memory for all (see the module docstring)
        size = {name: -(-math.prod(expected[name]) * want[name].itemsize // 64) * 64 for name in ours}
        arena, at = _arena(max(1, sum(size.values()))), 0
        for name, key in ours.items():
            n = math.prod(expected[name]) * want[name].itemsize
            state[name] = arena[at:at + n].view(want[name]).view(expected[name])
            tensors[key].copy_into(key, state[name])
            at += size[name]
    else:
        for name, key in ours.items():
            state[name] = tensors[key].tensor(key, want[name]).to(device)
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval().requires_grad_(False)


def load_decoder(model_dir: str | Path, dtype: torch.dtype | None = None, device: str = "cpu",
                 mtp: bool = True) -> NemotronH:
    """The NemotronH decoder of a text or Omni checkpoint folder, ready for inference.

    dtype: the compute dtype (default: the checkpoint's). mtp: load the MTP layers if present.
    """
    model_dir = Path(model_dir)
    raw, cfg_path = read_config_json(model_dir)
    cfg = DecoderConfig.from_dict(raw, source=str(cfg_path))
    if not mtp and cfg.num_nextn_predict_layers:
        cfg = replace(cfg, num_nextn_predict_layers=0)
    tensors = open_checkpoint(model_dir)
    prefix = decoder_prefix(raw)
    dtype = dtype or checkpoint_dtype(raw) or next((f.entries[k][0] for k, f in tensors.items()), torch.float32)

    with torch.device("meta"):
        model = NemotronH(cfg)
    skip = None if mtp else (lambda name: name.startswith("mtp."))      # present but not wanted
    return load_weights(model, tensors, prefix, dtype, device, where=str(model_dir),
                        keep_fp32=_KEEP_FP32, skip=skip)
