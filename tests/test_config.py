"""DecoderConfig: parsing both layer spellings, the Omni layouts, and validation errors that name
the field, the layer and the file, raised before any weight is allocated."""

from __future__ import annotations

import json
import math
import time

import pytest

from engine.config import ConfigError, DecoderConfig
from engine.loader import load_decoder

# A small text config (transformers' NemotronHConfig names), valid as it stands.
BASE = dict(
    vocab_size=320, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=96, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2,
    conv_kernel=4, chunk_size=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
    moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5, layer_norm_epsilon=1e-5,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, mlp_hidden_act="relu2", mamba_hidden_act="silu",
    time_step_limit=[0.0, {"__float__": "Infinity"}],
)
PATTERN = "M*EM-E"
BLOCK_TYPES = ["mamba", "attention", "moe", "mamba", "mlp", "moe"]


def write_config(tmp_path, **fields):
    d = {**BASE, "hybrid_override_pattern": PATTERN, **fields}
    d = {k: v for k, v in d.items() if v is not _DROP}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return path


_DROP = object()


def test_base_config_is_valid(tmp_path):
    cfg = DecoderConfig.from_file(write_config(tmp_path))
    assert cfg.pattern == PATTERN
    assert cfg.num_layers == 6
    assert cfg.time_step_limit == (0.0, math.inf)
    assert cfg.eos_token_ids == (2,)
    assert cfg.n_groups == 2 and cfg.chunk_size == 16


def test_from_file_accepts_the_folder(tmp_path):
    write_config(tmp_path)
    assert DecoderConfig.from_file(tmp_path).pattern == PATTERN


def test_both_pattern_spellings_give_the_same_config(tmp_path):
    a = DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": PATTERN})
    b = DecoderConfig.from_dict({**BASE, "layers_block_type": BLOCK_TYPES})
    c = DecoderConfig.from_dict({**BASE, "layers_block_type": ["linear_attention", "full_attention", "moe",
                                                               "linear_attention", "mlp", "moe"]})
    d = DecoderConfig.from_dict({**BASE, "layers_block_type": [t.upper() for t in BLOCK_TYPES]})
    assert a == b == c == d
    assert b.pattern == PATTERN


def test_text_config_and_llm_config_layouts_parse_like_the_text_config():
    text = DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": PATTERN})
    new = DecoderConfig.from_dict({"architectures": ["NemotronH_Nano_Omni"], "vision_config": {"hidden_size": 7},
                                   "text_config": {**BASE, "layers_block_type": BLOCK_TYPES}})
    legacy_fields = {k: v for k, v in BASE.items() if k not in ("n_groups", "conv_kernel", "chunk_size")}
    legacy = DecoderConfig.from_dict({"llm_config": {**legacy_fields, "hybrid_override_pattern": PATTERN,
                                                     "mamba_n_groups": 2, "mamba_d_conv": 4,
                                                     "mamba_chunk_size": 16}})
    assert new == text
    assert legacy == text
    assert "text_config" in new.source and "llm_config" in legacy.source


def test_legacy_field_names_are_read():
    fields = {k: v for k, v in BASE.items() if k not in ("n_groups", "conv_kernel", "chunk_size")}
    cfg = DecoderConfig.from_dict({"llm_config": {**fields, "hybrid_override_pattern": PATTERN,
                                                  "mamba_n_groups": 4, "mamba_d_conv": 3, "mamba_chunk_size": 32}})
    assert (cfg.n_groups, cfg.conv_kernel, cfg.chunk_size) == (4, 3, 32)


def test_unknown_kind_in_pattern_names_layer_and_file(tmp_path):
    path = write_config(tmp_path, hybrid_override_pattern="M*XE")
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    msg = str(e.value)
    assert "layer 2" in msg and "'X'" in msg and str(path) in msg


def test_unknown_kind_in_layers_block_type_names_layer_and_file(tmp_path):
    path = write_config(tmp_path, hybrid_override_pattern=_DROP,
                        layers_block_type=["mamba", "attention", "moe", "conv"])
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    msg = str(e.value)
    assert "layer 3" in msg and "'conv'" in msg and str(path) in msg


def test_unknown_kind_under_text_config_names_the_section(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"text_config": {**BASE, "layers_block_type": ["mamba", "conv"]}}))
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    assert "layer 1" in str(e.value) and str(path) in str(e.value) and "text_config" in str(e.value)


def test_unknown_kind_in_mtp_layers(tmp_path):
    path = write_config(tmp_path, num_nextn_predict_layers=1, mtp_layers_block_type=["attention", "conv"])
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    assert "layer 1" in str(e.value) and "'conv'" in str(e.value)


def test_missing_layer_description(tmp_path):
    path = write_config(tmp_path, hybrid_override_pattern=_DROP)
    with pytest.raises(ConfigError, match="hybrid_override_pattern"):
        DecoderConfig.from_file(path)


def test_empty_pattern(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        DecoderConfig.from_file(write_config(tmp_path, hybrid_override_pattern=""))


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        DecoderConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DecoderConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json"):
        DecoderConfig.from_file(tmp_path)


@pytest.mark.parametrize("fields, field_name", [
    (dict(num_key_value_heads=3), "num_key_value_heads"),          # 3 does not divide 4 heads
    (dict(num_key_value_heads=8), "num_key_value_heads"),          # more kv heads than heads
    (dict(n_group=3), "n_group"),                                  # 3 does not divide 8 experts
    (dict(n_group=2, topk_group=3), "topk_group"),                 # more groups chosen than exist
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),          # more than the 8 experts
    (dict(num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(vocab_size=-5), "vocab_size"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(mlp_hidden_act="gelu"), "mlp_hidden_act"),
    (dict(mamba_hidden_act="relu"), "mamba_hidden_act"),
    (dict(n_groups=3), "n_groups"),                                # 3 does not divide 8 mamba heads
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
    (dict(time_step_limit=[0.5, 0.1]), "time_step_limit"),
    (dict(eos_token_id=[2, 320]), "eos_token_id"),                 # not below vocab_size
    (dict(num_nextn_predict_layers=-1), "num_nextn_predict_layers"),
    (dict(moe_intermediate_size=0), "moe_intermediate_size"),
    (dict(intermediate_size=0), "intermediate_size"),
])
def test_out_of_range_field_names_the_field(tmp_path, fields, field_name):
    path = write_config(tmp_path, **fields)
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    msg = str(e.value)
    assert f"`{field_name}`" in msg, msg
    assert str(path) in msg, msg


def test_fields_of_absent_layer_kinds_are_not_checked():
    # no attention layer: the head counts do not matter
    cfg = DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": "ME", "num_key_value_heads": 3})
    assert cfg.pattern == "ME"


@pytest.mark.parametrize("fields, field_name", [
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(vocab_size="many"), "vocab_size"),
    (dict(hidden_size=[64]), "hidden_size"),
])
def test_malformed_field_is_a_config_error_naming_the_field(tmp_path, fields, field_name):
    # A zero head count or a value of the wrong type must be a ConfigError that names the field,
    # not a ZeroDivisionError / TypeError / bare int() ValueError from the parsing code.
    path = write_config(tmp_path, **fields)
    with pytest.raises(ConfigError) as e:
        DecoderConfig.from_file(path)
    assert field_name in str(e.value)


def test_validation_happens_before_any_allocation(tmp_path):
    # vocab_size 10**12 would need terabytes; the unknown layer kind must be reported first.
    write_config(tmp_path, vocab_size=10**12, hybrid_override_pattern="M*QE")
    (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_decoder(tmp_path)
    assert time.perf_counter() - t0 < 2.0
    assert "layer 2" in str(e.value) and "'Q'" in str(e.value)


def test_field_error_before_allocation_with_huge_vocab(tmp_path):
    write_config(tmp_path, vocab_size=10**12, hidden_size=10**6, num_key_value_heads=3)
    (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        load_decoder(tmp_path)
    assert time.perf_counter() - t0 < 2.0


def test_config_round_trips_through_save_decoder(tmp_path):
    from engine.checkpoint import config_to_dict
    cfg = DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": PATTERN, "time_step_limit": [0.001, 0.1],
                                   "eos_token_id": [2, 11]})
    again = DecoderConfig.from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    inf = DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": PATTERN})
    assert DecoderConfig.from_dict(json.loads(json.dumps(config_to_dict(inf)))) == inf


def test_transformers_config_parses(tmp_path):
    from builders import hf_config
    hf = hf_config(PATTERN)
    hf.save_pretrained(tmp_path)
    cfg = DecoderConfig.from_file(tmp_path)
    assert cfg.pattern == PATTERN
    assert cfg == DecoderConfig.from_dict({**BASE, "hybrid_override_pattern": PATTERN})
