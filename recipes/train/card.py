"""The model card (README.md of the checkpoint folder), written from the run's metrics.json.

    python -m recipes.train card --out assets/default-model

Every figure in the card is read from metrics.json; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


# metrics["eval"][set] keys: (EVS, how the answer is read); guided: the likeliest option after the reasoning
EVAL_COLUMNS = (("evs_off", "off", "free"), ("evs_0.7", "0.7", "free"), ("evs_off_guided", "off", "guided choice"),
                ("evs_0.7_guided", "0.7", "guided choice"))


def _eval_table(ev: dict) -> list[str]:
    rows = ["| held-out set | EVS | answer | items | accuracy | R@1 IoU 0.3 | R@1 IoU 0.5 | R@1 IoU 0.7 | mIoU |",
            "|---|---|---|---|---|---|---|---|---|"]
    for section, title in (("heldout", "20 s – 3 min"), ("heldout_2x_length", "6 min (2x the longest training clip)")):
        for key, evs, answer in EVAL_COLUMNS:
            m = ev.get(section, {}).get(key)
            if m:
                miou = "–" if m["miou"] is None else f"{m['miou']:.3f}"
                rows.append(f"| {title} | {evs} | {answer} | {m['n']} | {_pct(m['accuracy'])} | {_pct(m['r1_iou_0.3'])} | "
                            f"{_pct(m['r1_iou_0.5'])} | {_pct(m['r1_iou_0.7'])} | {miou} |")
    return rows


def _skill_table(ev: dict) -> list[str]:
    cols = [(s, key, f"EVS {evs}" + (", guided" if answer != "free" else "")) for s in ("heldout", "heldout_2x_length")
            for key, evs, answer in EVAL_COLUMNS if ev.get(s, {}).get(key)]
    names = {"heldout": "≤ 3 min", "heldout_2x_length": "6 min"}
    head = "| skill | " + " | ".join(f"{names[s]}, {label}" for s, _, label in cols) + " |"
    rows = [head, "|---" * (len(cols) + 1) + "|"]
    skills = list(dict.fromkeys(k for s, e, _ in cols for k in ev[s][e]["per_skill"]))    # score()'s MMOU order
    for skill in skills:
        cells = []
        for s, e, _ in cols:
            acc, n = ev[s][e]["per_skill"].get(skill), ev[s][e]["per_skill_n"].get(skill)
            cells.append("–" if acc is None else f"{_pct(acc)} ({n})")
        rows.append(f"| {skill} | " + " | ".join(cells) + " |")
    return rows


def _phase_line(ph: dict, cfg: dict) -> str | None:
    """The card's line for a phase before the clips (None for the clip phases), in the run's order."""
    if ph["phase"] == "init":
        return (f"- Every phase before the clips is `{ph['from']}`'s: its weights and tokenizer, continued here by the "
                "clip steps (`python -m recipes.train run --init`).")
    if ph["phase"] == "vision" and "held_out_after" not in ph:
        return (f"- The ViT alone (`recipes/train/vision.py`): {ph['steps']} steps on tubelets drawn fresh every step, "
                f"each object's colour and shape or word its labels, {ph['seconds'] / 60:.1f} min; loss "
                f"{ph['first_loss']:.3f} at the first step, {ph['final_loss']:.3f} over the last 20 (held-out figures "
                f"not recorded: {ph.get('held_out_lost', 'unknown why')}).")
    if ph["phase"] == "vision":
        after, before = ph["held_out_after"], ph["held_out_before"]
        return (f"- The ViT alone (`recipes/train/vision.py`): {ph['steps']} steps on tubelets drawn fresh every step, "
                f"each object's colour and shape or word its labels, {ph['seconds'] / 60:.1f} min; on held-out fresh "
                f"tubelets, colour {_pct(after['colour'])} and shape or word {_pct(after['shape_or_word'])} of "
                f"{after['objects']} objects right (from {_pct(before['colour'])} and {_pct(before['shape_or_word'])}).")
    if ph["phase"] == "chunk captions":
        return (f"- Captions of single chunks (`Trainer.chunk_caption_loss`): {ph['steps']} steps, each chunk read alone "
                f"after the stream header, then its gold caption, so the caption can come only from its media; loss "
                f"{ph['first_loss']:.3f} at the first step, {ph['final_loss']:.3f} over the last 20, {ph['seconds'] / 60:.1f} min."
                + (f" Then such rows from {cfg['chunk_caption_mix']} clip{'s' * (cfg['chunk_caption_mix'] != 1)} join "
                   "every clip step's loss." if cfg.get("chunk_caption_mix") else ""))
    if ph["phase"] == 0:
        from .recall import RecallTask

        def pairs(s: dict) -> str:
            narrow = s.get("end_id", RecallTask.end_id) != RecallTask.end_id
            return f"{s['pairs']} pairs" + (f" of ids below {s['end_id']}" if narrow else "")
        stages = ", then ".join(
            f"{pairs(s)} for {s['steps']} steps ({_pct(s['final_accuracy'])} of values right over its last 20 steps)"
            if not s.get("gap") else f"{pairs(s)} with {s['gap']} token{'s' * (s['gap'] != 1)} between a query "
            f"and its value for {s['steps']} steps ({_pct(s['final_accuracy'])})" for s in ph["stages"])
        return (f"- Associative recall (`recipes/train/recall.py`: key-value token pairs, then keys asked for their "
                f"values), a curriculum of {stages}, {ph['seconds'] / 60:.1f} min: the questions are lookups in the "
                "context, which no run learnt from the clips alone."
                + (f" Then {cfg['recall_mix_rows']} recall rows join every clip step's loss (weight "
                   f"{cfg['recall_mix_weight']}), so the skill is kept." if cfg.get("recall_mix_rows") else ""))
    if ph["phase"] == "text":
        rows = ph.get("rows", {})
        more = [f"{rows[k]} {name}" for k, name in (("questions", "questions (chained ones quoting the captions they read)"),
                                                    ("chains", "chained rows"),
                                                    ("windows", "rows asking a chunk's caption by its second"))
                if rows.get(k)]
        first, last = ph["evals"][0], ph["evals"][-1]
        return (f"- The {'questions' if more else 'lookup'} on text (`recipes/train/textqa.py`): {ph['steps']} step{'s' * (ph['steps'] != 1)} on "
                "fresh timelines laid out as sessions with their gold captions and no media, each with its "
                "\"When is this ...: X?\" rows" + (f" and up to {', '.join(more)}" if more else "") + ", "
                f"{ph['seconds'] / 60:.1f} min; on held-out timelines, \"When\" questions answered with the exact span: "
                f"{_pct(first['when_exact'])} before, {_pct(last['when_exact'])} after"
                + (f"; every question: {_pct(first['accuracy'])} before, {_pct(last['accuracy'])} after" if more else "")
                + ".")
    return None


def _caption_example(model: dict) -> str:
    """An audio chunk's caption as the model writes it (its config's stream_narration; runs that
    did not record it used the plain prefix)."""
    from fusion.stream import Narration

    raw = model.get("stream_narration") or {"prefix": {"audio": "(heard: ", "video": "(seen: "}, "close": ")"}
    return Narration.from_dict(raw, "metrics.json model.stream_narration").caption("audio", ["a bell 3.1-3.6"], 2.0)


def model_card(metrics: dict) -> str:
    m, d, t = metrics["model"], metrics["data"], metrics["training"]
    cfg, times = metrics["config"], metrics.get("timings", {})
    p = m["parameters"]
    lines = [
        "# omnistream default model",
        "",
        "A tiny model of the Nemotron 3 Nano Omni architecture, trained from scratch on synthetic clips (coloured",
        "shapes and words on screen; spoken words, tones, noises and notes) by `recipes/train` to answer temporal",
        "questions about such clips with timestamped reasoning (how well it does: Evaluation, below); it knows",
        "nothing of the real world.",
        "",
        "Loads with omnistream (`OmniModel.load`) and with transformers' `NemotronH_Omni_Reasoning_V3`",
        "(`tests/test_omni_parity.py` checks both give the same greedy answer on a demo clip).",
        "",
        "## Model",
        f"- Decoder: NemotronH, pattern `{m['pattern']}` (Mamba2 `M`, MoE `E`, attention `*`), "
        f"{p['decoder']:,} parameters; vocabulary {m['vocab_size']} (byte-level BPE trained on the corpus, special tokens at the released ids).",
        f"- Vision: RADIO-style ViT with pixel shuffle, 2-frame tubelets and EVS, {p['vision']:,} parameters.",
        f"- Audio: Parakeet-style FastConformer (8x subsampling) with its projector, {p['audio']:,} parameters.",
        f"- {m['total_parameters']:,} parameters in all; `model.safetensors` is {m['model_safetensors_mb']} MB (fp32).",
        "- The decoder, the vision tower (ViT and projector) and the audio projector are trained; the conformer keeps its seeded initialization (frozen).",
        "",
        "## Training",
        f"- Data (seed {metrics['seed']}): {d['train_clips']} clips, {d['train_seconds'] / 3600:.2f} hours, "
        f"{d['train_questions']} multiple-choice questions with TA-CoT targets, plus each clip's timed event list; "
        f"clips of 20 s to {d['longest_train_clip_s']:g} s.",
        *[line for ph in t.get("phases", []) if (line := _phase_line(ph, cfg))],
        f"- {t['steps_run']} steps of one clip each (its media prefix read once, its questions batched after it), "
        f"AdamW, lr {cfg['lr']} with warm-up and cosine decay, {t['tokens']:,} tokens read, "
        f"{t['target_tokens']:,} target tokens.",
        f"- EVS drawn at {cfg['evs_rates'][0]}–{cfg['evs_rates'][1]} on {100 * cfg['evs_share']:.0f}% of the steps.",
        f"- Expert balancing without an auxiliary loss: `e_score_correction_bias` moves by {cfg['balance_rate']} x "
        f"sign(mean load - expert load) after every step. Final imbalance (most-loaded / mean): "
        f"{t['final_expert_imbalance']}.",
        f"- Loss: {t['first_loss']:.3f} at the first step, {t['final_loss']:.3f} over the last 5% of steps; "
        f"validation loss {t['final_val_loss']} ({t.get('final_val_loss_swapped_media')} with another clip's media in "
        "place of each clip's own).",
        *([f"- Narration: every chunk is followed by its caption (what it holds, `{_caption_example(m)}`), which the "
           f"model learns to write and writes itself at inference; {t['caption_tokens']:,} caption tokens predicted; "
           f"held-out caption loss {t['final_val_caption_loss']} ({t['final_val_caption_loss_swapped_media']} with "
           "another clip's media: the gap is what the model reads from the media)."] if t.get("caption_tokens") else []),
        f"- Time on 2 CPU cores: training {times.get('train_s', 0) / 60:.1f} min"
        + (f", held-out evaluation {times['eval_s'] / 60:.1f} min" if "eval_s" in times else "") + ".",
        "- Curves: " + ", ".join(f"`{c}`" for c in metrics.get("curves", [])) + "; every step: `train_log.jsonl`.",
        "",
        "## Evaluation",
        "`python -m app eval` on clips generated from seeds the training never saw, 10 options a question",
        "(chance 10%); grounding from the spans of the reasoning.",
        "",
    ]
    ev = metrics.get("eval")
    if ev:
        lines += _eval_table(ev) + ["", "Accuracy by skill (items in brackets):", ""] + _skill_table(ev) + [""]
        lines += [f"- {ev[s]['data']}" for s in ("heldout", "heldout_2x_length") if s in ev] + [""]
        if "narration" in ev:
            n = ev["narration"]
            lines += ["Its own captions of the chunks of the first set (`python -m recipes.train narration`): exact "
                      "caption, and precision / recall of the things named:", "",
                      "| chunks | count | exact | precision | recall |", "|---|---|---|---|---|"]
            lines += [f"| {m} | {n[m]['chunks']} | {100 * n[m]['exact']:.1f}% | {100 * n[m]['precision']:.1f}% | "
                      f"{100 * n[m]['recall']:.1f}% |" for m in ("audio", "video") if m in n] + [""]
    else:
        lines += ["(no held-out evaluation in this run)", ""]
    lines += [
        *(["## How this file was made", metrics["recovered"], ""] if metrics.get("recovered") else []),
        "## Reproduce",
        "    make train-default      # python -m recipes.train run --out assets/default-model --seed 0",
        "",
        "The same seed gives the same weights (the run is deterministic on one machine); the timings differ.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out_dir) -> Path:
    out = Path(out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    path = out / "README.md"
    path.write_text(model_card(metrics))
    return path
