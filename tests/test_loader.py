"""engine.loader: sharded and Omni layouts, errors naming keys and shapes, corrupt files, dtype
conversion, and the memory the loader needs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from builders import TINY, build_text_checkpoint
from engine.config import ConfigError, DecoderConfig
from engine.generate import Session
from engine.loader import LoadError, load_decoder

ROOT = Path(__file__).resolve().parent.parent
PATTERN = "M*EM-E"
# conv_kernel 3 and chunk_size 8 differ from the config defaults (4, 128), so a legacy field name
# that is not understood changes the shapes or the chunked scan.
OVERRIDES = dict(conv_kernel=3, chunk_size=8)
IDS = [(7 * i + 3) % TINY["vocab_size"] for i in range(40)]   # longer than chunk_size: several chunks


def last_logits(model, ids=IDS) -> torch.Tensor:
    return Session(model).prefill(ids)[0].float()


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# ---- checkpoints shared by the module (built once) ------------------------------------------

@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text")
    build_text_checkpoint(path, PATTERN, **OVERRIDES)
    return path


@pytest.fixture(scope="module")
def text_logits(text_ckpt) -> torch.Tensor:
    return last_logits(load_decoder(text_ckpt))


@pytest.fixture(scope="module")
def sharded_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharded")
    build_text_checkpoint(path, PATTERN, max_shard_size="20KB", **OVERRIDES)
    return path


def read_raw(path: Path) -> tuple[dict, bytes]:
    b = path.read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_raw(path: Path, header: dict, data: bytes, align: int = 8) -> None:
    """A safetensors file; the data section starts at a multiple of `align` bytes."""
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % align)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- sharded ------------------------------------------------------------------------------

def test_sharded_checkpoint_equals_single_file(sharded_ckpt, text_ckpt, text_logits):
    shards = sorted(sharded_ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert (sharded_ckpt / "model.safetensors.index.json").exists()
    assert not (sharded_ckpt / "model.safetensors").exists()
    model = load_decoder(sharded_ckpt)
    assert_same_weights(model, load_decoder(text_ckpt))
    got = last_logits(model)
    assert (got - text_logits).abs().max().item() == 0


def test_loaded_weights_are_the_saved_ones(text_ckpt):
    model = load_decoder(text_ckpt)
    saved = load_file(text_ckpt / "model.safetensors")
    ours = model.state_dict()
    assert set(ours) == set(saved)
    for k, v in saved.items():
        assert torch.equal(ours[k], v), k


def test_our_logits_match_transformers(text_ckpt, text_logits):
    from transformers import NemotronHForCausalLM
    hf = NemotronHForCausalLM.from_pretrained(text_ckpt).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0, -1].float()
    assert (ref - text_logits).abs().max().item() < 1e-4


# ---- Omni layouts -------------------------------------------------------------------------

EXTRA_TENSORS = {
    "vision_model.radio_model.model.patch_generator.embedder.weight": (32, 48),
    "mlp1.0.weight": (16,),
    "mlp1.1.weight": (64, 16),
    "sound_encoder.encoder.x": (3, 5),
    "sound_projection.linear.weight": (64, 12),
}
_KIND_NEW = {"linear_attention": "mamba", "full_attention": "attention", "moe": "moe", "mlp": "mlp"}
_KIND_CHAR = {"linear_attention": "M", "full_attention": "*", "moe": "E", "mlp": "-"}


def omni_tensors(text_ckpt: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    t = {"language_model." + k: v for k, v in load_file(text_ckpt / "model.safetensors").items()}
    for name, shape in EXTRA_TENSORS.items():
        t[name] = torch.randn(shape, generator=g)
    return t


def new_style_config(text_cfg: dict) -> dict:
    tc = dict(text_cfg)
    tc["layers_block_type"] = [_KIND_NEW[k] for k in tc["layers_block_type"]]
    tc["time_step_limit"] = [0.0, {"__float__": "Infinity"}]
    tc.pop("mtp_layers_block_type", None)
    return {"architectures": ["NemotronH_Nano_Omni_Reasoning_V3"], "model_type": "NemotronH_Nano_VL_V2",
            "text_config": tc, "vision_config": {"model_type": "radio", "hidden_size": 48},
            "sound_config": {"model_type": "parakeet", "hidden_size": 12}, "dtype": "float32"}


def legacy_config(text_cfg: dict) -> dict:
    lc = dict(text_cfg)
    lc["hybrid_override_pattern"] = "".join(_KIND_CHAR[k] for k in lc.pop("layers_block_type"))
    lc.pop("mtp_layers_block_type", None)
    for new, old in (("n_groups", "mamba_n_groups"), ("conv_kernel", "mamba_d_conv"), ("chunk_size", "mamba_chunk_size")):
        lc[old] = lc.pop(new)
    lc["time_step_limit"] = [0.0, {"__float__": "Infinity"}]
    return {"architectures": ["NemotronH_Nano_VL_V2"], "llm_config": lc,
            "vision_config": {"model_type": "radio"}, "torch_dtype": "float32"}


@pytest.mark.parametrize("layout", ["text_config", "llm_config"])
def test_omni_checkpoint_equals_text_checkpoint(tmp_path, text_ckpt, text_logits, layout):
    text_cfg = json.loads((text_ckpt / "config.json").read_text())
    cfg = new_style_config(text_cfg) if layout == "text_config" else legacy_config(text_cfg)
    if layout == "llm_config":
        assert "n_groups" not in cfg["llm_config"] and "layers_block_type" not in cfg["llm_config"]
    (tmp_path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(omni_tensors(text_ckpt), tmp_path / "model.safetensors", metadata={"format": "pt"})

    assert DecoderConfig.from_file(tmp_path) == DecoderConfig.from_file(text_ckpt)
    model = load_decoder(tmp_path)
    assert not any(k.startswith(("vision", "mlp1", "sound")) for k in model.state_dict())
    assert_same_weights(model, load_decoder(text_ckpt))
    assert (last_logits(model) - text_logits).abs().max().item() == 0


def test_omni_checkpoint_sharded(tmp_path, text_ckpt, text_logits):
    text_cfg = json.loads((text_ckpt / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(new_style_config(text_cfg)))
    tensors = omni_tensors(text_ckpt)
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[0::2], keys[1::2])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, tmp_path / name)
        weight_map.update({k: name for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = load_decoder(tmp_path)
    assert_same_weights(model, load_decoder(text_ckpt))
    assert (last_logits(model) - text_logits).abs().max().item() == 0


@pytest.mark.parametrize("shift", [0, 4, 8, 12, 16, 32])
def test_logits_do_not_depend_on_tensor_offsets_in_the_file(tmp_path, text_ckpt, text_logits, shift):
    """The text checkpoint's tensors rewritten as an Omni file whose decoder tensors start
    `shift` bytes past a 64-byte boundary (a filler tensor of another tower first). Safetensors
    only promises element alignment, so the loader must give the same logits wherever the
    tensors sit (and the same weights, bit for bit)."""
    header, data = read_raw(text_ckpt / "model.safetensors")
    header.pop("__metadata__", None)
    header = {"language_model." + k: {**e, "data_offsets": [e["data_offsets"][0] + 64 + shift,
                                                           e["data_offsets"][1] + 64 + shift]}
              for k, e in header.items()}
    header["vision_model.filler"] = {"dtype": "U8", "shape": [64 + shift], "data_offsets": [0, 64 + shift]}
    write_raw(tmp_path / "model.safetensors", header, bytes(64 + shift) + data, align=64)
    cfg = json.loads((text_ckpt / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(new_style_config(cfg)))
    model = load_decoder(tmp_path)
    assert_same_weights(model, load_decoder(text_ckpt))
    assert (last_logits(model) - text_logits).abs().max().item() == 0


# ---- errors that name the key and the shapes ----------------------------------------------

def test_missing_tensor(tmp_path, text_ckpt):
    d = copy_ckpt(text_ckpt, tmp_path / "ck")
    t = load_file(d / "model.safetensors")
    key = "backbone.layers.2.mixer.experts.3.up_proj.weight"
    shape = list(t.pop(key).shape)
    save_file(t, d / "model.safetensors")
    with pytest.raises(LoadError) as e:
        load_decoder(d)
    msg = str(e.value)
    assert repr(key) in msg and str(shape) in msg and "missing" in msg


def test_unexpected_tensor(tmp_path, text_ckpt):
    d = copy_ckpt(text_ckpt, tmp_path / "ck")
    t = load_file(d / "model.safetensors")
    key = "backbone.layers.0.mixer.bogus.weight"
    t[key] = torch.zeros(3, 7)
    save_file(t, d / "model.safetensors")
    with pytest.raises(LoadError) as e:
        load_decoder(d)
    msg = str(e.value)
    assert repr(key) in msg and "[3, 7]" in msg and "unexpected" in msg


def test_misshaped_tensor(tmp_path, text_ckpt):
    d = copy_ckpt(text_ckpt, tmp_path / "ck")
    t = load_file(d / "model.safetensors")
    key = "backbone.layers.1.mixer.k_proj.weight"
    want = list(t[key].shape)
    t[key] = torch.zeros(want[0] + 16, want[1])
    save_file(t, d / "model.safetensors")
    with pytest.raises(LoadError) as e:
        load_decoder(d)
    msg = str(e.value)
    assert repr(key) in msg and str(want) in msg and str([want[0] + 16, want[1]]) in msg


def test_mtp_weights_loaded_only_when_asked(tmp_path):
    build_text_checkpoint(tmp_path, "M*E", mtp=True)
    with_mtp = load_decoder(tmp_path)
    without = load_decoder(tmp_path, mtp=False)
    assert hasattr(with_mtp, "mtp") and with_mtp.cfg.num_nextn_predict_layers == 1
    assert not hasattr(without, "mtp") and without.cfg.num_nextn_predict_layers == 0
    saved = load_file(tmp_path / "model.safetensors")
    assert torch.equal(with_mtp.state_dict()["mtp.layers.0.eh_proj.weight"], saved["mtp.layers.0.eh_proj.weight"])
    assert (last_logits(with_mtp) - last_logits(without)).abs().max().item() == 0


def test_config_error_propagates_from_load(tmp_path, text_ckpt):
    d = copy_ckpt(text_ckpt, tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    cfg["layers_block_type"][1] = "conv"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="layer 1"):
        load_decoder(d)


def test_no_config(tmp_path):
    with pytest.raises((LoadError, ConfigError), match="config.json"):
        load_decoder(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises((LoadError, ConfigError), match="config.json"):
        load_decoder(tmp_path)


# ---- corrupt files ------------------------------------------------------------------------

@pytest.fixture
def ck(tmp_path, text_ckpt) -> Path:
    return copy_ckpt(text_ckpt, tmp_path / "ck")


def expect_load_error(d: Path, named: Path | str, match: str | None = None) -> str:
    t0 = time.perf_counter()
    with pytest.raises(LoadError) as e:
        load_decoder(d)
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert str(named) in msg, msg
    if match:
        assert match in msg, msg
    return msg


def test_truncated_file(ck):
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    expect_load_error(ck, f)


def test_file_shorter_than_the_length_prefix(ck):
    f = ck / "model.safetensors"
    f.write_bytes(b"\x01\x02\x03")
    expect_load_error(ck, f, "too short")


def test_header_length_beyond_the_file(ck):
    f = ck / "model.safetensors"
    b = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(b) + 10) + b[8:])
    expect_load_error(ck, f, "header length")


def test_header_offsets_beyond_the_data(ck):
    f = ck / "model.safetensors"
    header, data = read_raw(f)
    key = "backbone.layers.1.mixer.o_proj.weight"
    s, e = header[key]["data_offsets"]
    header[key]["data_offsets"] = [s + len(data), e + len(data)]   # right size, past the end
    write_raw(f, header, data)
    msg = expect_load_error(ck, f)
    assert key in msg


def test_garbage_bytes(ck):
    f = ck / "model.safetensors"
    f.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096)))
    expect_load_error(ck, f)


def test_header_not_json(ck):
    f = ck / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 16) + b"\xff\xfe{not json!!!!" + b"\0" * 64)
    expect_load_error(ck, f, "JSON")


def test_header_not_an_object(ck):
    f = ck / "model.safetensors"
    write_raw(f, [1, 2, 3], b"")
    expect_load_error(ck, f)


def test_header_entry_malformed(ck):
    f = ck / "model.safetensors"
    header, data = read_raw(f)
    key = "backbone.norm_f.weight"
    del header[key]["data_offsets"]
    write_raw(f, header, data)
    assert key in expect_load_error(ck, f)


def test_unsupported_dtype(ck):
    f = ck / "model.safetensors"
    header, data = read_raw(f)
    key = "backbone.norm_f.weight"
    header[key]["dtype"] = "F8_E4M3"
    write_raw(f, header, data)
    assert "F8_E4M3" in expect_load_error(ck, f)


def test_enormous_tensor_in_header_fails_fast(ck):
    """A header claiming a tensor of 2**62 bytes whose offsets do not cover it."""
    f = ck / "model.safetensors"
    header, data = read_raw(f)
    key = "backbone.embeddings.weight"
    header[key]["shape"] = [2 ** 40, 2 ** 20]
    write_raw(f, header, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = expect_load_error(ck, f)
    assert key in msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024   # KiB


def test_enormous_consistent_tensor_is_not_allocated(ck):
    """A (sparse) 64 GiB file whose header is self-consistent: the mis-shaped tensor is reported
    from the header alone, without reading or allocating it."""
    f = ck / "model.safetensors"
    header, data = read_raw(f)
    key = "backbone.embeddings.weight"
    start = len(data)
    big = 2 ** 34                                     # 2**34 F32 = 64 GiB
    header[key] = {"dtype": "F32", "shape": [big // 64, 64], "data_offsets": [start, start + big * 4]}
    write_raw(f, header, data)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size + big * 4)       # sparse: costs no disk
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = expect_load_error(ck, ck)
    assert key in msg and str([big // 64, 64]) in msg and str([TINY["vocab_size"], TINY["hidden_size"]]) in msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024


def test_empty_safetensors_file(tmp_path, text_ckpt):
    # a valid file holding no tensors, and a config that names no dtype
    cfg = json.loads((text_ckpt / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_raw(tmp_path / "model.safetensors", {"__metadata__": {"format": "pt"}}, b"")
    with pytest.raises(LoadError, match="missing tensor"):
        load_decoder(tmp_path)


@pytest.fixture
def sck(tmp_path, sharded_ckpt) -> Path:
    return copy_ckpt(sharded_ckpt, tmp_path / "sck")


def _index(d: Path) -> tuple[Path, dict]:
    p = d / "model.safetensors.index.json"
    return p, json.loads(p.read_text())


def test_index_names_a_missing_shard(sck):
    idx_path, idx = _index(sck)
    shard = sorted(set(idx["weight_map"].values()))[1]
    (sck / shard).unlink()
    msg = expect_load_error(sck, idx_path)
    assert shard in msg


@pytest.mark.parametrize("bad", ["../outside.safetensors", "sub/../../outside.safetensors",
                                 "/etc/outside.safetensors", "weights.bin"])
def test_index_shard_path_outside_the_folder(sck, bad):
    idx_path, idx = _index(sck)
    # a real file there, so only the path check can stop it
    shutil.copy(sck / sorted(set(idx["weight_map"].values()))[0], sck.parent / "outside.safetensors")
    key = next(iter(idx["weight_map"]))
    idx["weight_map"][key] = bad
    idx_path.write_text(json.dumps(idx))
    msg = expect_load_error(sck, idx_path)
    assert bad in msg


def test_index_points_at_a_shard_without_the_key(sck):
    idx_path, idx = _index(sck)
    names = sorted(set(idx["weight_map"].values()))
    key = next(k for k, v in idx["weight_map"].items() if v == names[0])
    idx["weight_map"][key] = names[1]
    idx_path.write_text(json.dumps(idx))
    assert key in expect_load_error(sck, idx_path)


def test_index_not_json(sck):
    idx_path, _ = _index(sck)
    idx_path.write_text("{")
    expect_load_error(sck, idx_path)


def test_corrupt_shard_named(sck):
    _, idx = _index(sck)
    shard = sorted(set(idx["weight_map"].values()))[2]
    (sck / shard).write_bytes(b"\xff" * 100)
    expect_load_error(sck, sck / shard)


def test_only_pickle_weights(tmp_path, text_ckpt):
    shutil.copy(text_ckpt / "config.json", tmp_path / "config.json")
    torch.save(load_file(text_ckpt / "model.safetensors"), tmp_path / "pytorch_model.bin")
    msg = expect_load_error(tmp_path, tmp_path)
    assert "safetensors only" in msg


def test_no_weights(tmp_path, text_ckpt):
    shutil.copy(text_ckpt / "config.json", tmp_path / "config.json")
    expect_load_error(tmp_path, tmp_path, "model.safetensors")


# ---- dtype --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_load(text_ckpt, text_logits, dtype):
    model = load_decoder(text_ckpt, dtype=dtype)
    assert model.dtype == dtype
    sd = model.state_dict()
    for i, kind in enumerate(PATTERN):
        if kind == "E":
            assert model.backbone.layers[i].mixer.gate.weight.dtype == torch.float32
            assert model.backbone.layers[i].mixer.gate.e_score_correction_bias.dtype == torch.float32
            assert model.backbone.layers[i].mixer.experts[0].up_proj.weight.dtype == dtype
    assert sd["lm_head.weight"].dtype == dtype
    assert sd["backbone.layers.1.mixer.q_proj.weight"].dtype == dtype
    # the router weights are the checkpoint's exactly
    saved = load_file(text_ckpt / "model.safetensors")
    assert torch.equal(sd["backbone.layers.2.mixer.gate.weight"], saved["backbone.layers.2.mixer.gate.weight"])
    got = last_logits(model)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    scale = text_logits.abs().max().item()
    err = (got - text_logits).abs().max().item()
    assert err < 0.1 * scale, (err, scale)
    assert got.argmax() == text_logits.argmax() or err < 0.02 * scale


def test_default_dtype_is_the_checkpoints(tmp_path):
    build_text_checkpoint(tmp_path, "M*E", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model = load_decoder(tmp_path)
    assert model.dtype == torch.bfloat16
    assert model.backbone.layers[2].mixer.gate.weight.dtype == torch.float32
    up = load_decoder(tmp_path, dtype=torch.float32)
    assert up.dtype == torch.float32
    assert torch.equal(up.backbone.embeddings.weight.to(torch.bfloat16), model.backbone.embeddings.weight)


# ---- memory -------------------------------------------------------------------------------

_MEASURE = r"""
import json, os, sys
sys.path.insert(0, {root!r})
import torch
from engine.loader import load_decoder

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)

def reset_peak():   # the peak RSS (VmHWM) restarts from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

dtype = {dtype}
if {warm!r}:
    # pay the one-time costs of the code path first (the first module built on the meta device
    # imports torch._dynamo, ~70 MiB) so that what is measured is what the weights cost
    load_decoder({warm!r}, dtype=dtype)
before = status("VmRSS")
reset_peak()
assert status("VmHWM") <= before + (4 << 20)
model = load_decoder({path!r}, dtype=dtype)
load = status("VmHWM") - before
with torch.no_grad():                       # touch every byte, as the first forward does
    for t in model.state_dict().values():
        t.float().sum() if t.numel() < 1 << 16 else t.sum()
touched = status("VmHWM") - before
weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps(dict(before=before, load=load, touched=touched, rss_after=status("VmRSS") - before,
                      weights=weights)))
"""

BIG = dict(vocab_size=8192, hidden_size=512, pattern="MEM*EMEM-E", num_attention_heads=8, num_key_value_heads=2,
           head_dim=64, intermediate_size=2048, mamba_num_heads=16, mamba_head_dim=64, ssm_state_size=64,
           n_groups=4, chunk_size=64, n_routed_experts=16, num_experts_per_tok=2, moe_intermediate_size=512,
           moe_shared_expert_intermediate_size=1024, routed_scaling_factor=2.5)


@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory) -> Path:
    from engine.checkpoint import init_random, save_decoder
    from engine.model import NemotronH
    path = tmp_path_factory.mktemp("big")
    cfg = DecoderConfig(**BIG)
    cfg.validate()
    with torch.device("meta"):
        model = NemotronH(cfg)
    model = model.to_empty(device="cpu")
    for b in model.buffers():
        b.zero_()
    save_decoder(init_random(model, seed=0), path)
    del model
    return path


def measure_load(path: Path, dtype: str, warm: Path | None) -> dict:
    code = _MEASURE.format(root=str(ROOT), path=str(path), dtype=dtype, warm=str(warm) if warm else "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{dtype}: " + ", ".join(f"{k}={v / 2**20:.1f}MiB" for k, v in m.items()))
    return m


def test_peak_memory_fp32(big_ckpt, text_ckpt):
    file_bytes = (big_ckpt / "model.safetensors").stat().st_size
    m = measure_load(big_ckpt, "None", warm=text_ckpt)
    assert m["weights"] > 150 * 2**20
    assert abs(m["weights"] - file_bytes) < 2**20
    assert m["load"] <= 1.3 * m["weights"], m
    assert m["touched"] <= 1.3 * m["weights"], m


def test_peak_memory_bf16(big_ckpt, text_ckpt):
    m = measure_load(big_ckpt, "torch.bfloat16", warm=text_ckpt)
    fp32_bytes = (big_ckpt / "model.safetensors").stat().st_size
    assert m["weights"] < 0.55 * fp32_bytes                  # converted (routers stay fp32)
    assert m["load"] <= 1.3 * m["weights"], m
    assert m["touched"] <= 1.3 * m["weights"], m
