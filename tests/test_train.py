"""recipes/train: the training path equals the inference path, balancing balances, a run reproduces.

The fixtures are a few 20 s synthetic clips (made once per session) and the default model's
architecture at its seeded initialization; step counts are tiny.
"""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.evaluate import extract_choice, media_chunks, parse_item, question_prompt
from app.timestamps import find_time_spans, format_seconds
from engine.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from fusion.omni import OmniModel
from fusion.prompt import question_tail, stream_header
from recipes.train.config import VOCAB_SIZE, WHOLE_NUMBERS, TrainConfig
from recipes.train.data import chunk_caption, corpus_texts, load_clip, make_clips, prompt_and_target, timeline_target
from recipes.train.model import new_model, save_omni
from recipes.train.reading import caption_things_at, format_reading, reading_accuracy
from recipes.train.run import _clips, gold_caption_accuracy, narration_accuracy, refresh_card, run
from recipes.train.train import Batch, ExpertLoad, Trainer, decoder_forward, expand_state, length_groups


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 20 s clips with cached features, a tokenizer trained on their corpus, and the model."""
    folder = tmp_path_factory.mktemp("train-data")
    items = make_clips(folder, 5, [(20.0, 22.0, 2)], model_seed=0, vocab_size=VOCAB_SIZE, fps=1.0,
                       audio_clip_s=2.0, workers=0)
    clips = _clips(folder, items)
    tok_dir = folder / "model"
    train_tokenizer(tok_dir, corpus_texts(items, [c.timeline for c in clips]), vocab_size=VOCAB_SIZE, repeat=1,
                    whole_numbers=WHOLE_NUMBERS)
    return folder, items, clips, Tokenizer.from_dir(tok_dir), tok_dir


def test_cached_tower_inputs_through_the_towers_are_what_eval_reads(data):
    """Training's prefix (cached patches -> vision tower, cached conformer output -> sound projector -> chunk_input) equals the decoder input
    `python -m app eval` builds from the mp4 with the saved checkpoint."""
    folder, items, clips, tok, tok_dir = data
    raw, decoder, vision, audio = new_model(0, VOCAB_SIZE)
    save_omni(tok_dir, raw, decoder, vision, audio)
    trainer = Trainer(decoder, vision, audio, tok)
    clip = clips[0]
    with torch.no_grad():
        ours, ids, is_caption = trainer.prefix(clip)
    assert not is_caption.any()
    omni = OmniModel.load(tok_dir)
    chunks = media_chunks(omni, folder / "clips" / f"{clip.clip_id}.mp4")
    assert [(c.modality, c.label) for c in chunks] == [(m["modality"], m["label"]) for m in clip.meta]
    assert chunks[0].modality == "video" and chunks[1].modality == "audio" and chunks[1].label.startswith("Audio from 0.00")
    from fusion.stream import chunk_input
    ph = {"video": 18, "audio": 27}
    with torch.inference_mode():
        ref = torch.cat([omni.decoder.embed(torch.tensor([tok.encode(stream_header())]))[0]]
                        + [chunk_input(c, tok, omni.decoder.embed, ph[c.modality]) for c in chunks])
    assert ours.shape == ref.shape and ids.shape == (ours.shape[0],)
    # the ViT's input patches are cached in fp16 (half the disk and memory of fp32), hence the tolerance
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-3)
    media = (ids == 18) | (ids == 27)
    torch.testing.assert_close(ours[~media], omni.decoder.embed(ids[~media]), atol=0, rtol=0)


def test_a_captioned_chunk_is_followed_by_its_caption_naming_its_events(data):
    """A captioned chunk is followed by its caption; uncaptioned, the layout is a plain stream's;
    the caption names the timeline's events in that chunk's span, each with its own time span."""
    folder, items, clips, tok, _ = data
    raw, decoder, vision, audio = new_model(0, VOCAB_SIZE)
    trainer = Trainer(decoder, vision, audio, tok)
    clip = clips[0]
    with torch.no_grad():
        plain, plain_ids, _ = trainer.prefix(clip)
        x, ids, is_caption = trainer.prefix(clip, captioned={1, 3})
    caps = [chunk_caption(clip.timeline, clip.meta[k]) for k in (1, 3)]
    assert tok.decode(ids[is_caption].tolist()) == "".join(caps)
    assert torch.equal(ids[~is_caption], plain_ids) and torch.equal(x[~is_caption], plain)
    with torch.no_grad():
        chunks = clip.chunks(vision(clip.video.float(), clip.grid, video=True), audio.projection(clip.audio))
    layout = [caps[k // 2] if k in (1, 3) else "" for k in range(len(chunks))]
    assert tok.decode(ids.tolist()) == stream_header() + "".join(c.text() + cap for cap, c in zip(layout, chunks))
    for m in clip.meta:
        cap = chunk_caption(clip.timeline, m)
        audio_chunk = m["modality"] == "audio"
        inside = {f'{e["label"]} {format_seconds(e["t0"])}-{format_seconds(e["t1"])}'
                  for e in clip.timeline["events"] if (e["modality"] == "audio") == audio_chunk and (
            m["t0"] <= (e["t0"] + e["t1"]) / 2 < m["t1"] if audio_chunk else
            e["t0"] <= m["t0"] < e["t1"] or e["t0"] <= m["t1"] < e["t1"])}
        head = "(heard: " if audio_chunk else "(seen: "
        assert cap.startswith(head) and cap.endswith(") ")
        named = cap[len(head):-2]
        assert set(named.split("; ")) == inside if inside else named == "nothing"
        # what narrate() prefills before generating is a token prefix of every caption (the
        # opening's space is part of the first word's token)
        opening = tok.encode(head.rstrip())
        assert tok.encode(cap)[:len(opening)] == opening and tok.encode(head) != tok.encode(cap)[:len(tok.encode(head))]
    loss, stats = trainer.loss(clip, clip.items[:2], False, captioned={1, 3}, caption_weight=1.0)
    assert stats["caption_tokens"] == int(is_caption[1:].sum()) and stats["caption_loss"] > 0


def test_eval_command_narrates_each_chunk_then_answers(data, tmp_path):
    """`python -m app eval` on a saved checkpoint of this recipe: its answers are those of a session
    that prefilled each chunk and the model's own caption of it, then the question."""
    folder, items, clips, tok, tok_dir = data
    raw, decoder, vision, audio = new_model(3, VOCAB_SIZE)
    save_omni(tok_dir, raw, decoder, vision, audio)
    clip = clips[0]
    chosen = [it for it in items if Path(it["video"]).stem == clip.clip_id][:2]
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps([dict(it, video=str(folder / it["video"])) for it in chosen]))
    preds = tmp_path / "preds.json"
    r = subprocess.run([sys.executable, "-m", "app", "eval", "--model", str(tok_dir), "--data", str(eval_json),
                        "--max-new-tokens", "12", "--json", "--predictions", str(preds)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 2 and {"accuracy", "per_skill", "r1_iou_0.5", "miou"} <= metrics.keys()
    got = json.loads(preds.read_text())
    omni = OmniModel.load(tok_dir)
    narration = omni.settings.narration
    from engine.generate import SamplingParams, Session, generate
    from fusion.stream import chunk_input, narrate
    with torch.inference_mode():
        s = Session(omni.decoder)
        s.prefill(tok.encode(stream_header()))
        for c in media_chunks(omni, folder / "clips" / f"{clip.clip_id}.mp4"):
            s.prefill(embeds=chunk_input(c, tok, omni.decoder.embed, 18 if c.modality == "video" else 27))
            assert narrate(s, c, tok, narration).startswith(narration.prefix[c.modality].rstrip())
        for it in chosen:
            f = s.fork()
            f.prefill(tok.encode(question_tail(question_prompt(parse_item(it, "x")))))
            want = [t for t in generate(f, SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=tuple(tok.eos_ids)))
                    if t not in tok.eos_ids]
            assert got[it["question_id"]] == tok.decode(want)
    # `python -m app generate` reads a file in the same layout by default for a narrating model
    it = chosen[0]
    r = subprocess.run([sys.executable, "-m", "app", "generate", "--model", str(tok_dir), "--video",
                        str(folder / it["video"]), "--prompt", question_prompt(parse_item(it, "x")), "--greedy",
                        "--max-new-tokens", "12", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["layout"] == "stream"
    assert tok.decode([t for t in out["output_ids"] if t not in tok.eos_ids]) == got[it["question_id"]]
    assert tok.decode(out["prompt_ids"]).startswith(stream_header()) and "(heard:" in tok.decode(out["prompt_ids"])
    assert out["token_counts"]["video"] + out["token_counts"]["audio"] == sum(
        c.num_tokens for c in media_chunks(omni, folder / it["video"]))


def test_guided_choice_answers_with_the_option_a_plain_session_scores_likeliest(data):
    """`answer_from` with choices: the reasoning is the free greedy one up to `</think>` (written for
    it when the budget runs out), the answer the option whose tokens, ended, a session that read the
    whole text in one piece gives the highest log-likelihood."""
    from app.evaluate import THINK_END, answer_from
    from engine.generate import SamplingParams, Session, generate

    folder, items, clips, tok, tok_dir = data
    decoder = new_model(3, VOCAB_SIZE)[1]
    context = tok.encode(stream_header()) + tok.encode(chunk_caption(clips[0].timeline, clips[0].meta[0]))
    asked = [parse_item(it, "x") for it in items[:3]]
    prompts = [question_prompt(it) for it in asked]
    think_end, end = tok.token_id(THINK_END), tok.token_id("<|im_end|>")
    with torch.inference_mode():
        s = Session(decoder)
        s.prefill(context)
        got = answer_from(s, tok, prompts, choices=[list(it.options.values()) for it in asked], max_new_tokens=6)
        for it, q, answer in zip(asked, prompts, got):
            f = Session(decoder)
            f.prefill(context + tok.encode(question_tail(q)))
            params = SamplingParams(max_new_tokens=6, temperature=0.0, stop_ids=tuple(tok.eos_ids) + (think_end,))
            reasoning = [t for t in generate(f, params) if t not in params.stop_ids]
            head = context + tok.encode(question_tail(q)) + reasoning + [think_end]
            scores = []
            for text in it.options.values():
                ids = tok.encode("\n" + text) + [end]
                whole = Session(decoder)
                logits = decoder(whole.state, input_ids=torch.tensor([head + ids]), logits="all").logits[0]
                lp = torch.log_softmax(logits[len(head) - 1:-1].float(), -1)
                scores.append(float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum()))
            best = list(it.options.values())[max(range(len(scores)), key=scores.__getitem__)]
            assert answer == tok.decode(reasoning) + THINK_END + "\n" + best
            assert extract_choice(answer, it.options) in it.options


def test_shared_prefix_batch_equals_separate_sequences(data):
    """The loss and gradients of one prefix continued by a padded batch of suffixes equal those of
    each whole sequence run on its own."""
    folder, items, clips, tok, _ = data
    torch.manual_seed(0)
    raw, decoder, vision, audio = new_model(1, VOCAB_SIZE)
    decoder.train()
    trainer = Trainer(decoder, vision, audio, tok)
    clip = clips[1]
    rows = trainer.rows(clip, clip.items[:3])
    prefix = torch.randn(37, decoder.cfg.hidden_size) * 0.5          # any prefix; its length is not a block size

    def separate():
        total = 0.0
        for p, t in rows:
            seq = torch.tensor(p + t)
            x = torch.cat([prefix, decoder.embed(seq[None])[0]])
            out = decoder_forward(decoder, decoder.new_state(), inputs_embeds=x[None], logits="all")
            logits = out.logits[0, prefix.shape[0] + len(p) - 1:-1]
            total = total + torch.nn.functional.cross_entropy(logits, seq[len(p):], reduction="sum")
        return total

    def shared():
        st = decoder.new_state()
        decoder_forward(decoder, st, inputs_embeds=prefix[None], logits="none")
        batch = Batch(rows)
        out = decoder_forward(decoder, expand_state(st, len(rows), batch.ids.shape[1]),
                              inputs_embeds=decoder.embed(batch.ids), logits="none")
        where = batch.target != -100
        return torch.nn.functional.cross_entropy(decoder.lm_head(out.hidden[where]), batch.target[where], reduction="sum")

    grads = []
    for fn in (separate, shared):
        decoder.zero_grad()
        loss = fn()
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}))
    assert math.isclose(grads[0][0], grads[1][0], rel_tol=1e-4)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name in grads[0][1]:
        torch.testing.assert_close(grads[1][1][name], grads[0][1][name], atol=2e-4, rtol=2e-3, msg=name)


def test_card_names_the_rows_a_text_phase_trained():
    """A text phase's card line names every kind of row it trained, and only those."""
    from recipes.train.card import _phase_line

    ph = {"phase": "text", "steps": 10, "seconds": 60.0,
          "evals": [{"when_exact": 0.0, "accuracy": 0.1}, {"when_exact": 0.5, "accuracy": 0.25}],
          "rows": {"timelines": 2, "questions": 12, "lookups": 24, "chains": 0, "windows": 24}}
    line = _phase_line(ph, {})
    assert line.startswith("- The questions on text")
    assert "up to 12 questions (chained ones quoting the captions they read), 24 rows asking a chunk's caption" in line
    assert "chained rows" not in line and "0.0% before, 50.0% after; every question: 10.0% before, 25.0% after." in line
    lookups_only = _phase_line({**ph, "rows": {"questions": 0, "lookups": 24}}, {})
    assert lookups_only == _phase_line({k: v for k, v in ph.items() if k != "rows"}, {})
    assert lookups_only.startswith("- The lookup on text") and lookups_only.endswith("50.0% after.")
    assert "X?\" rows, 1.0 min" in lookups_only and "every question" not in lookups_only


def test_length_groups_run_the_fewest_padded_tokens():
    """Every row lands in exactly one batch, batches are runs of the sorted lengths, and the split
    costs no more than any other split into contiguous runs (checked exhaustively on small sets)."""
    import itertools
    import random

    rng = random.Random(3)

    def cost(groups, group_cost):
        return sum(len(g) * max(len(p) + len(t) for p, t in g) + group_cost for g in groups)

    for n in (1, 2, 5, 9):
        rows = [([0] * rng.randint(5, 30), [1] * rng.choice([rng.randint(1, 8), rng.randint(60, 200)])) for _ in range(n)]
        groups = length_groups(rows, max_groups=4, group_cost=40)
        assert sorted(map(id, (r for g in groups for r in g))) == sorted(map(id, rows))
        widths = [[len(p) + len(t) for p, t in g] for g in groups]
        assert all(a[-1] <= b[0] for a, b in zip(widths, widths[1:])) and all(w == sorted(w) for w in widths)
        order = sorted(rows, key=lambda r: len(r[0]) + len(r[1]))
        splits = [[order[i:j] for i, j in zip((0,) + cuts, cuts + (n,))]
                  for k in range(0, min(3, n - 1) + 1) for cuts in itertools.combinations(range(1, n), k)]
        assert cost(groups, 40) == min(cost(s, 40) for s in splits)
    assert length_groups([]) == []


def test_chunk_captions_are_read_after_their_chunk_alone(data):
    """The single-chunk caption loss is each chunk's caption after the stream header and that chunk
    alone, as if each row ran on its own: the batch's padding changes nothing."""
    import random

    from fusion.stream import chunk_input

    folder, items, clips, tok, _ = data
    torch.manual_seed(0)
    raw, decoder, vision, audio = new_model(1, VOCAB_SIZE)
    trainer = Trainer(decoder, vision, audio, tok, raw["image_token_id"], raw["audio_token_id"])
    clip = clips[0]
    with torch.no_grad():
        loss, n = trainer.chunk_caption_loss([clip], len(clip.meta), random.Random(0))
        chunks = clip.chunks(vision(clip.video.float(), clip.grid, video=True), audio.projection(clip.audio))
        header = decoder.embed(torch.tensor([tok.encode(stream_header())]))[0]
        total, count = 0.0, 0
        for k, c in enumerate(chunks):
            cap = torch.tensor(tok.encode(chunk_caption(clip.timeline, clip.meta[k])))
            x = torch.cat([header, chunk_input(c, tok, decoder.embed, trainer.placeholder[c.modality]), decoder.embed(cap[None])[0]])
            logits = decoder_forward(decoder, decoder.new_state(), inputs_embeds=x[None], logits="all").logits[0]
            total += float(F.cross_entropy(logits[-len(cap) - 1:-1].float(), cap, reduction="sum"))
            count += len(cap)
    assert {c.modality for c in chunks} == {"video", "audio"} and n == count
    assert math.isclose(float(loss), total / count, rel_tol=1e-4)


def test_reading_finds_each_named_thing_in_its_caption_tokens(data):
    """The token ranges `reading` scores are each thing's name, colour and shape or word in the
    caption's own tokens (a word's token carries the space before it)."""
    folder, items, clips, tok, _ = data
    counted = {"audio": 0, "video": 0}
    for clip in clips:
        for meta in clip.meta:
            whole = tok.encode(chunk_caption(clip.timeline, meta))
            for e, ranges in caption_things_at(tok, clip.timeline, meta):
                assert tok.decode(whole[slice(*ranges["name"])]).strip() == e["label"]
                if meta["modality"] == "video":
                    assert tok.decode(whole[slice(*ranges["colour"])]).strip() == e["colour"]
                    assert tok.decode(whole[slice(*ranges["thing"])]).strip() == e.get("shape", e.get("word"))
                counted[meta["modality"]] += 1
    assert counted["audio"] > 0 and counted["video"] > 0


def test_expert_balancing_moves_the_bias_towards_even_load():
    """Aux-loss-free balancing: an overloaded expert's correction bias goes down, an idle one's
    up, and on fixed inputs repeated updates even out the load."""
    torch.manual_seed(0)
    raw, decoder, _, _ = new_model(2, VOCAB_SIZE)
    load = ExpertLoad(decoder)
    layer, moe = load.layers[0]
    u = torch.nn.functional.normalize(torch.randn(decoder.cfg.hidden_size), dim=0)
    with torch.no_grad():
        moe.gate.weight[0] += 2.0 * u        # tokens along u prefer expert 0
    x = torch.randn(1, 128, decoder.cfg.hidden_size) + 4 * u

    def step():
        with torch.no_grad():
            decoder_forward(decoder, decoder.new_state(), inputs_embeds=x, logits="none")
        counts = load.counts[layer].clone()
        return counts, float(counts.max() / counts.mean())

    counts, first = step()
    assert counts.sum() == 128 * decoder.cfg.num_experts_per_tok
    before = moe.gate.e_score_correction_bias.clone()
    load.update(0.02)
    change = moe.gate.e_score_correction_bias - before
    assert change[counts.argmax()] < 0 and change[counts.argmin()] > 0
    for _ in range(25):
        counts, last = step()
        load.update(0.02)
    assert first > 3.0 and last < 0.5 * first, (first, last)
    load.remove()


def test_timeline_target_and_tokenizer(data):
    folder, items, clips, tok, _ = data
    tl = clips[0].timeline
    text = timeline_target(tl)
    spans = find_time_spans(text)
    assert len(spans) == len(tl["events"])
    assert min(s.start_s for s in spans) == min(e["t0"] for e in tl["events"])
    for tid, name in SPECIAL_TOKENS.items():
        assert tok.token_id(name) == tid
    assert tok.vocab_size <= VOCAB_SIZE            # the embedding table covers every id
    # whole numbers below WHOLE_NUMBERS are one token, so times past the training clips' lengths are
    # spelled the same way (every such token exists whatever the corpus held)
    assert [tok.decode([i]) for i in tok.encode("347.5")] == ["347", ".", "5"]
    assert [tok.decode([i]) for i in tok.encode(str(WHOLE_NUMBERS))] == [str(WHOLE_NUMBERS // 10), "0"]
    q = question_tail(parse_item(items[0], "x").question)
    assert tok.decode(tok.encode(q)) == q


def test_a_tiny_run_writes_a_loadable_checkpoint_and_reproduces(data, tmp_path):
    folder, *_ = data
    cfg = TrainConfig(seed=5, train_bands=((20.0, 22.0, 2),), steps=3, warmup_steps=1, workers=0, max_questions=3,
                      evs_share=0.5, val_clips=1, finetune_steps=2, recall_stages=((2, 3, 0, 256), (4, 2)), vision_steps=2,
                      vision_clips=1, text_steps=2, text_timelines=1, text_held_out=1, chunk_caption_steps=2,
                      chunk_caption_clips=1, chunk_caption_rows=3, chunk_caption_mix=1, text_mix_steps=1,
                      text_questions=2, text_windows=3)
    a, b = tmp_path / "a", tmp_path / "b"
    m = run(a, cfg, folder / "run", evaluate=False, progress=False)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "generation_config.json", "train_log.jsonl", "loss.png",
                 "expert_balance.png", "metrics.json"):
        assert (a / name).is_file(), name
    log = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4] and all(r["loss"] > 0 for r in log) and "val_loss" in log[-1]
    assert [r.get("phase", 1) for r in log] == [1, 1, 1, 2, 2] and "val_loss_swapped_media" in log[-1]
    assert all(r["caption_tokens"] > 0 for r in log)                # every chunk narrated
    assert all(r["recall_loss"] > 0 and 0 <= r["recall_accuracy"] <= 1 for r in log)   # recall rows mixed in
    assert "val_caption_loss_swapped_media" in log[-1]
    assert m["training"]["steps_run"] == 5 and m["model"]["model_safetensors_mb"] < 50
    recall = [json.loads(line) for line in (a / "recall_log.jsonl").read_text().splitlines()]   # phase 0 ran first
    assert [(r["pairs"], r["step"]) for r in recall] == [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1)]
    vision = [json.loads(line) for line in (a / "vision_log.jsonl").read_text().splitlines()]   # the ViT first
    phases = m["training"]["phases"]
    assert [ph["phase"] for ph in phases] == ["vision", 0, "text", "text", "chunk captions", 1, 2]
    assert [r["step"] for r in vision] == [1, 2]
    chunks = [json.loads(line) for line in (a / "chunk_caption_log.jsonl").read_text().splitlines()]  # reading media
    assert [r["step"] for r in chunks] == [1, 2] and all(r["loss"] > 0 and r["caption_tokens"] > 0 for r in chunks)
    assert all(r["chunk_caption_loss"] > 0 and r["chunk_caption_tokens"] > 0 for r in log)   # and mixed in
    assert [s["steps"] for s in phases[1]["stages"]] == [3, 2]
    text = [json.loads(line) for line in (a / "text_log.jsonl").read_text().splitlines()]    # then lookups on text
    assert [r["step"] for r in text] == [0, 2]
    assert phases[2]["rows"] == {"timelines": 1, "questions": 0, "lookups": 24, "chains": 0, "windows": 0}
    assert phases[2]["task"] == "lookups on gold captions of fresh timelines"     # the lookups alone first,
    mix = [json.loads(line) for line in (a / "text_mix_log.jsonl").read_text().splitlines()]  # then the mix
    assert [r["step"] for r in mix] == [0, 1] and mix[0]["n"] == text[0]["n"]      # on the same held-out timelines,
    assert {k: v for k, v in mix[0].items() if k not in ("time_s", "loss")} == {   # the lookups' last score its start
        k: v for k, v in text[-1].items() if k not in ("time_s", "loss")} | {"step": 0}
    assert phases[3]["rows"] == {"timelines": 1, "questions": 2, "lookups": 24, "chains": 0, "windows": 3}
    assert phases[3]["task"] == "lookups, questions, windows on gold captions of fresh timelines"
    assert text[0]["n"] == text[1]["n"] > 3 and math.isfinite(text[1]["loss"])
    assert m["training"]["final_val_caption_loss"] == log[-1]["val_caption_loss"]
    assert (a / "README.md").read_text().startswith("# omnistream default model")
    assert json.loads((a / "metrics.json").read_text())["data"]["train_clips"] == 2
    card = (a / "README.md").read_text()
    assert "Associative recall" in card and "2 pairs of ids below 256 for 3 steps" in card and "4 pairs for 2 steps" in card
    assert "The ViT alone (`recipes/train/vision.py`): 2 steps" in card
    assert "16 recall rows join every clip step's loss" in card
    assert "The lookup on text (`recipes/train/textqa.py`): 2 steps" in card
    assert "The questions on text (`recipes/train/textqa.py`): 1 step on" in card
    assert "Captions of single chunks (`Trainer.chunk_caption_loss`): 2 steps" in card
    order = [card.index(k) for k in ("The ViT alone", "Associative recall", "The lookup on text", "The questions on text",
                                     "Captions of single")]
    assert order == sorted(order)                           # the phases in the order the run made them
    assert "Then such rows from 1 clip join every clip step's loss." in card
    for name in ("README.md", "loss.png"):
        (a / name).unlink()
    refresh_card(a)                                        # from the log and metrics alone
    assert (a / "README.md").read_text() == card and (a / "loss.png").is_file()
    omni = OmniModel.load(a)
    assert omni.vision is not None and omni.audio is not None
    assert omni.settings.narration.caption("audio", ["a bell"]) == "(heard: a bell) "     # it narrates
    assert f"`{omni.settings.narration.caption('audio', ['a bell 3.1-3.6'], 2.0)}`" in card    # as its card shows
    # answers with the gold captions in context; 4 tokens cannot close the reasoning, so none is scored
    gold = gold_caption_accuracy(a, folder / "run" / "val", questions_per_clip=2, max_new_tokens=4)
    assert gold["n"] == 2 and gold["accuracy"] == 0.0 and sum(gold["per_skill"].values()) == 0.0
    shown = io.StringIO()                     # its own captions of every chunk, beside the gold ones
    narrated = narration_accuracy(a, folder / "run" / "val", show=shown)
    lines = shown.getvalue().splitlines()
    assert len(lines) == 3 * sum(n["chunks"] for n in narrated.values()) and narrated["video"]["chunks"] > 0
    assert [line[:7] for line in lines[1:3]] == ["  gold ", "  own  "] and lines[1].endswith(")")
    read = reading_accuracy(a, folder / "run" / "val")     # teacher-forced names, in the session and alone
    val = _clips(folder / "run" / "val", [it for f in sorted((folder / "run" / "val" / "items").glob("*.json"))
                                          for it in json.loads(f.read_text())])
    run_tok = Tokenizer.from_dir(a)
    named = {m: sum(len(caption_things_at(run_tok, c.timeline, meta)) for c in val for meta in c.meta
                    if meta["modality"] == m) for m in ("audio", "video")}
    assert {m: sum(g["things"] for g in read[m].values()) for m in read} == {m: n for m, n in named.items() if n}
    assert all(0 <= v <= 1 for groups in read.values() for g in groups.values() for k, v in g.items() if k != "things")
    assert set(read["audio"]) <= {"new", "continuing"} and set(read["video"]) <= {
        f"{kind} {what}" for kind in ("new", "continuing") for what in ("shape", "word")}
    assert all(set(g) == {"things"} | {f"{w}_{p}" for w in ("session", "alone") for p in ("name", "colour", "thing")}
               for g in read["video"].values())
    assert format_reading(read).count("\n") == 1 + sum(len(groups) for groups in read.values())
    run(b, cfg, folder / "run", evaluate=False, progress=False)      # the same seed: the same weights
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    # phase 2 alone, from phase 1's snapshot and log, ends on the same weights as the whole run
    c = tmp_path / "c"
    c.mkdir()
    (c / "train_log.jsonl").write_text("".join(line + "\n" for line in (a / "train_log.jsonl").read_text().splitlines()[:3]))
    run(c, cfg, folder / "run", evaluate=False, progress=False, phase1_from=folder / "run" / "snapshots" / "step3")
    assert (a / "model.safetensors").read_bytes() == (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_phase_two_targets_answer_with_the_option_text(data):
    _, items, *_ = data
    it = items[0]
    q, letter_target = prompt_and_target(it)
    q2, text_target = prompt_and_target(it, "text")
    assert q == q2 and letter_target.startswith(text_target.split("</think>\n")[0])
    answer = it["options"][it["correct_option_letter"]]
    assert letter_target.endswith(f"</think>\n({it['correct_option_letter']}) {answer}")
    assert text_target.endswith(f"</think>\n{answer}")
    from app.evaluate import extract_choice
    assert extract_choice(text_target, it["options"]) == it["correct_option_letter"]   # the scorer reads it
    with pytest.raises(ValueError, match="answer must be"):
        prompt_and_target(it, "number")


def test_init_continues_a_checkpoint_with_its_tokenizer_and_the_clip_steps_alone(data, tmp_path):
    """`run(init=DIR)` keeps DIR's tokenizer (its weights index those ids), skips every phase before
    the clips even where the config asks for them, and trains DIR's weights on; the card says so."""
    import dataclasses

    folder, *_ = data
    cfg = TrainConfig(seed=5, train_bands=((20.0, 22.0, 2),), steps=2, warmup_steps=1, workers=0, max_questions=3,
                      val_clips=1, recall_stages=(), vision_steps=0, text_steps=0, chunk_caption_steps=0,
                      chunk_caption_mix=0)
    first, second = tmp_path / "first", tmp_path / "second"
    run(first, cfg, folder / "run", evaluate=False, progress=False)
    (second).mkdir()
    (second / "tokenizer.json").write_text("stale")          # replaced by the checkpoint's own
    more = dataclasses.replace(cfg, vision_steps=2, recall_stages=((2, 3),), quote_chains=True, window_rows=3)
    m = run(second, more, folder / "run", evaluate=False, progress=False, init=first)
    assert (second / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    assert [ph["phase"] for ph in m["training"]["phases"]] == ["init", 1]
    assert not (second / "vision_log.jsonl").exists() and not (second / "recall_log.jsonl").exists()
    assert (second / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    log = [json.loads(line) for line in (second / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["lookup_tokens"] > 0 for r in log)
    assert f"Every phase before the clips is `{first}`'s" in (second / "README.md").read_text()


@pytest.mark.parametrize("frozen", ["projectors", "vit"])
def test_learning_rate_scales_of_the_projectors_and_the_vit(data, tmp_path, frozen):
    """projector_lr_scale=0 trains the decoder and the ViT and leaves both projectors as initialized;
    vision_lr_scale=0 leaves the ViT (not mlp1) as initialized; the conformer is frozen."""
    folder, *_ = data
    cfg = TrainConfig(seed=5, train_bands=((20.0, 22.0, 2),), steps=2, warmup_steps=1, workers=0, max_questions=3,
                      val_clips=1, recall_stages=(), vision_steps=0, text_steps=0, chunk_caption_steps=0,
                      chunk_caption_mix=0, projector_lr_scale=0.0 if frozen == "projectors" else 1.0,
                      vision_lr_scale=0.0 if frozen == "vit" else 1.0)
    run(tmp_path / "m", cfg, folder / "run", evaluate=False, progress=False)
    raw, decoder, vision, audio = new_model(5, VOCAB_SIZE)
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    projectors = {"mlp1.1.weight": vision.mlp1[1].weight, "sound_projection.linear1.weight": audio.projection.linear1.weight}
    vit = "vision_model.radio_model.model."
    vit_weights = {k: vision.state_dict()[k] for k in (vit + "blocks.0.attn.qkv.weight",
                                                       vit + "patch_generator.video_embedder.weight")}
    for group, weights in (("projectors", projectors), ("vit", vit_weights)):
        for k, v in weights.items():
            assert torch.equal(saved[k], v) == (group == frozen), k
    assert not torch.equal(saved["language_model.lm_head.weight"], decoder.lm_head.weight)
    for k, v in audio.encoder.state_dict().items():
        torch.testing.assert_close(saved[f"sound_encoder.encoder.{k}"], v, atol=0, rtol=0)


def test_linear_probe_reads_what_the_cached_features_carry(data):
    from recipes.train.probe import linear_probe, probe_samples
    folder, items, clips, *_ = data
    video, audio = probe_samples(folder, new_model(0, VOCAB_SIZE)[2])
    assert len(video) <= sum(c.video.shape[0] for c in clips) and video
    words = {c.clip_id: {e.get("word") or e["label"] for e in c.timeline["events"] if e["modality"] == "audio"} for c in clips}
    assert audio and all(lab["word or sound"] in words[cid] for _, lab, cid in audio)
    g = torch.Generator().manual_seed(0)                      # separable classes: the probe must find them
    centres = torch.randn(3, 16, generator=g) * 4
    y = [k % 3 for k in range(90)]
    x = centres[y] + torch.randn(90, 16, generator=g)
    r = linear_probe(x, [str(k) for k in y], torch.arange(90) >= 60)
    assert r["accuracy"] == 1.0 and r["held_out"] == 30 and abs(r["majority"] - 1 / 3) < 0.01


def test_recall_rows_ask_for_values_the_context_holds():
    from recipes.train.recall import RecallTask, recall_batch

    task = RecallTask(pairs=6, queries=4, rows=5)
    ids, targets = recall_batch(task, VOCAB_SIZE, torch.Generator().manual_seed(0))
    half = (min(VOCAB_SIZE, task.end_id) - task.first_id) // 2
    assert ids.shape == targets.shape == (5, 1 + 2 * 6 + 1 + 2 * 4)
    for row, tgt in zip(ids.tolist(), targets.tolist()):
        keys, values = row[1:13:2], row[2:13:2]
        assert row[0] == 1 and row[13] == task.separator_id and len(set(keys)) == 6
        assert all(task.first_id <= k < task.first_id + half <= v < task.end_id for k, v in zip(keys, values))
        pairs = dict(zip(keys, values))
        asked = [j for j, t in enumerate(tgt) if t != -100]
        assert asked == [14, 16, 18, 20]
        for j in asked:
            assert tgt[j] == row[j + 1] == pairs[row[j]]
    # with a gap, each query is its key, the gap tokens, then its value, predicted from the gap's last token
    gapped = RecallTask(pairs=6, queries=4, rows=5, gap=(11, 12, 13))
    ids, targets = recall_batch(gapped, VOCAB_SIZE, torch.Generator().manual_seed(0))
    assert ids.shape == targets.shape == (5, 1 + 2 * 6 + 1 + 5 * 4)
    for row, tgt in zip(ids.tolist(), targets.tolist()):
        pairs = dict(zip(row[1:13:2], row[2:13:2]))
        asked = [j for j, t in enumerate(tgt) if t != -100]
        assert asked == [17, 22, 27, 32]
        for j in asked:
            assert row[j - 3] in pairs and row[j - 2:j + 1] == [11, 12, 13] and tgt[j] == row[j + 1] == pairs[row[j - 3]]
    # a narrow stage draws its keys and values from the first ids alone (keys below the values)
    narrow = RecallTask(pairs=4, queries=4, rows=64, end_id=80)
    ids, _ = recall_batch(narrow, VOCAB_SIZE, torch.Generator().manual_seed(0))
    context = ids[:, 1:9]
    assert context[:, 0::2].min() >= 64 and context[:, 0::2].max() < 72 <= context[:, 1::2].min() and ids.max() < 80
    with pytest.raises(ValueError, match="does not fit"):
        recall_batch(RecallTask(pairs=4, queries=4, end_id=70), VOCAB_SIZE, torch.Generator())


def test_recall_stages_take_their_gap_from_the_chat_template():
    from engine.tokenizer import Tokenizer
    from recipes.train.recall import RecallTask, chat_gap, stage_task

    tok = Tokenizer.from_dir(Path(__file__).resolve().parent.parent / "assets" / "default-model")
    gap = chat_gap(tok)
    assert tok.decode(list(gap)) == "<|im_end|>\n<|im_start|>assistant\n<think>\n<t>"
    assert stage_task((16, 100), gap).gap == () and stage_task((16, 100, 2), gap).gap == gap[-2:]
    assert stage_task((8, 100, len(gap)), gap, rows=4).gap == gap and stage_task((8, 1, 1), gap, rows=4).rows == 4
    assert stage_task((16, 100), gap).end_id == RecallTask.end_id         # a fourth number narrows the ids
    narrow = stage_task((4, 100, 2, 256), gap)
    assert (narrow.end_id, narrow.gap, narrow.pairs) == (256, gap[-2:], 4)
    with pytest.raises(ValueError, match=f"a gap of {len(gap) + 1} tokens, but only {len(gap)} gap ids"):
        stage_task((16, 100, len(gap) + 1), gap)


def test_recall_probe_command_trains_and_logs(tmp_path):
    """`python -m recipes.train recall` trains a fresh decoder of the given pattern on recall rows,
    stage by stage: one log line a step, and within 40 steps the values' loss falls from uniform
    over the vocabulary (ln 1536 = 7.34) towards uniform over the value half (ln 480 = 6.17; keys and values are drawn below id 1,024)."""
    log = tmp_path / "recall.jsonl"
    out = subprocess.run([sys.executable, "-m", "recipes.train", "recall", "--pattern", "M*", "--pairs", "4,8",
                          "--steps", "40,5", "--gaps", "0,3", "--end-ids", "1024,256", "--log", str(log)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["pattern"] == "M*"
    assert [(s["pairs"], s["queries"], s["steps"], s["gap"], s["end_id"]) for s in summary["stages"]] == [
        (4, 4, 40, 0, 1024), (8, 8, 5, 3, 256)]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["pairs"], r["step"], r["gap"], r["end_id"]) for r in rows] == [(4, k, 0, 1024) for k in range(40)] + [
        (8, k, 3, 256) for k in range(5)]
    assert rows[0]["recall_loss"] > 7.2
    assert sum(r["recall_loss"] for r in rows[35:40]) / 5 < 7.0
    bad = subprocess.run([sys.executable, "-m", "recipes.train", "recall", "--pairs", "4,8", "--steps", "1,2,3",
                          "--log", str(log)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and "3 numbers in --steps, 2 in --gaps and 2 in --end-ids for 2 stages of --pairs" in bad.stderr


def test_lookup_rows_ask_when_each_uniquely_named_event_happens(data):
    """One "When is this ...: X?" row per event whose label no other event of its modality shares (flashes
    aside), worded as the generator's when-questions, answered with the event's own span; the loss
    counts them."""
    from recipes.train.data import lookup_rows
    folder, items, clips, tok, _ = data
    clip = clips[0]
    events = clip.timeline["events"]
    rows = lookup_rows(clip.timeline)
    objects = [e for e in events if e["modality"] == "visual" and e["kind"] != "flash"]
    sounds = [e for e in events if e["modality"] == "audio"]
    unique = [e for group in (objects, sounds) for e in group if sum(o["label"] == e["label"] for o in group) == 1]
    assert len(rows) == len(unique) > 0 and len({k for k, _, _ in rows}) == len(rows)
    for (key, question, target), e in zip(rows, unique):
        assert question.startswith("When is this ") and question.endswith(f": {e['label']}?")
        spans = find_time_spans(target)
        assert [(s.start_s, s.end_s) for s in spans] == [(e["t0"], e["t1"])] * 2      # the step and the answer
    asked = [it for it in items if it["question"].startswith("When is ")]
    assert asked and all(any(q == it["question"] for _, q, _ in lookup_rows(c.timeline)) for c in clips for it in c.items
                         if it in asked)
    raw, decoder, vision, audio = new_model(0, VOCAB_SIZE)
    trainer = Trainer(decoder, vision, audio, tok)
    _, stats = trainer.loss(clip, clip.items[:2], False, lookups=rows[:3])
    assert stats["lookup_tokens"] == sum(len(tok.encode(t)) + 1 for _, _, t in rows[:3]) and stats["lookup_loss"] > 0


def test_narration_compares_things_by_name(data):
    """The narration score reads the names a caption gives, spans left out, as the captions write them."""
    from recipes.train.run import caption_things
    folder, items, clips, *_ = data
    clip = clips[0]
    for m in clip.meta:
        names = {e["label"] for e in clip.timeline["events"] if e["label"] in chunk_caption(clip.timeline, m)}
        assert caption_things(chunk_caption(clip.timeline, m), m["modality"]) == names
    assert caption_things('(heard: a bell 3.1-3.6; the word "cat" 12.0-12.4) ', "audio") == {"a bell", 'the word "cat"'}
    assert caption_things("(seen: nothing) ", "video") == set()


def test_vision_pretraining_labels_each_object_by_the_tokens_it_covers():
    """A drawn object's labels are its own, its token weights sit where it is drawn, and a few steps
    of pretraining lower the loss on a fixed batch."""
    import numpy as np

    from recipes.synthetic.timeline import Event, Timeline
    from recipes.synthetic.wordbank import load_wordbank
    from recipes.train.vision import VisionHeads, label_names, object_cover, tubelet_batch

    bank = load_wordbank()
    colours, things = label_names(bank.categories)
    assert colours[-1] == things[-1] == "none" and "star" in things and "DOG" in things
    star = Event("v0", "visual", "shape", "a red star", 0.0, 5.0, colour="red", shape="star", size=0.2,
                 position={"x0": 0.1, "y0": 0.1, "x1": 0.1, "y1": 0.1})
    word = Event("v1", "visual", "word", "the blue word DOG", 0.0, 5.0, colour="blue", word="DOG", size=0.12,
                 position={"x0": 0.7, "y0": 0.8, "x1": 0.7, "y1": 0.8})
    tl = Timeline("t", 10.0, (30, 30, 30), [star, word])
    cover = object_cover(tl, [0, 10], 4, 5)
    assert cover.shape == (2, 20)
    assert cover[0].reshape(4, 5)[0, 0] > 0.2 and cover[0].reshape(4, 5)[2:, :].sum() == 0     # top left
    assert cover[1].reshape(4, 5)[3, 3] > 0 and cover[1].reshape(4, 5)[:2, :].sum() == 0        # bottom row
    _, decoder, vision, _ = new_model(0, VOCAB_SIZE)
    words_s = bank.word_seconds
    patches, grid, objects = tubelet_batch(np.random.default_rng(0), vision.cfg, bank.categories, words_s, colours,
                                           things, clips=1, seconds=(12.0, 12.0))
    assert patches.shape == (6, grid[0] * grid[1], 2 * 3 * 16 * 16) and objects
    for i, w, c, t in objects:
        assert 0 <= i < 6 and abs(float(w.sum()) - 1) < 1e-5 and colours[c] != "none" and things[t] != "none"
    torch.manual_seed(0)
    heads = VisionHeads(vision, colours, things)
    params = [p for n, p in vision.named_parameters() if not n.startswith("mlp1.")] + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        first = float(heads.loss(vision, patches, grid, objects)[0])
    for _ in range(5):
        loss = heads.loss(vision, patches, grid, objects)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(heads.loss(vision, patches, grid, objects)[0]) < first - 0.5


def test_text_questions_lay_out_a_clips_chunks_with_their_gold_captions(data):
    """The text layout (recipes/train/textqa.py) is a session's: the same chunks in the same order
    as a clip read from its file, with the same labels, each chunk's label, its empty media brackets,
    then its gold caption."""
    from recipes.train.textqa import caption_context, chunk_layout

    folder, items, clips, tok, _ = data
    for clip in clips:
        laid = chunk_layout(clip.timeline)
        assert [(c["modality"], c["seq"], c["label"]) for c in laid] == [(m["modality"], m["seq"], m["label"])
                                                                          for m in clip.meta]
        text = caption_context(clip.timeline)
        assert text.startswith(stream_header())
        at = len(stream_header())
        for c in laid:
            caption = chunk_caption(clip.timeline, c)
            at = text.index(c["label"], at)
            assert text[at + len(c["label"]):].startswith("\n".join(["<img></img>" if c["modality"] == "video"
                                                                    else "<so_start><so_end>", caption]))
        assert text.endswith(chunk_caption(clip.timeline, laid[-1]))


CHAINED = ("What is heard right after this: ", "What is on screen when this is spoken: ",
           "Which word is spoken while this is on screen: ")


@pytest.fixture
def keyed_narration(monkeypatch):
    """The recipe's captions opening with their chunk's start second (unique, so a quoted caption
    names its chunk)."""
    import recipes.train.data as train_data
    from fusion.stream import Narration

    monkeypatch.setattr(train_data, "NARRATION", Narration.from_dict(
        {"prefix": {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}, "close": ")"}))


def test_chain_rows_read_the_captions_between_their_two_steps(data, keyed_narration):
    """Every question of a clip that chains two lookups (what is heard right after X, what is on
    screen when X is spoken, which word is spoken while X is on screen) has a chain row with the
    same question: the generator's first step, then the session's captions the second lookup reads
    (in session order: a run of audio chunks, or the one tubelet showing the object), the last of
    them naming the answer, then the generator's second step and the answer's text. The clip's own
    items are routed the same way, their answer line kept; the other items are left as they are."""
    from recipes.train.data import chain_rows, route_chains
    _, _, clips, _, _ = data
    asked = 0
    for clip in clips:
        captions = [chunk_caption(clip.timeline, m).rstrip() for m in clip.meta]
        audio = [chunk_caption(clip.timeline, m).rstrip() for m in clip.meta if m["modality"] == "audio"]
        rows = chain_rows(clip.timeline, clip.meta)
        assert len({k for k, _, _ in rows}) == len(rows)
        by_question = {q: t for _, q, t in rows}
        for _, question, target in rows:
            assert question.startswith(CHAINED)
            lines, _, answer = target.partition("\n</think>\n")
            lines = lines.split("\n")
            quoted = lines[1:-1]
            assert lines[0].startswith("<t>") and lines[-1].startswith("<t>") and quoted
            at = [captions.index(q) for q in quoted]
            assert at == sorted(at) and answer in quoted[-1]
            if question.startswith(CHAINED[1]):
                assert len(quoted) == 1 and clip.meta[at[0]]["modality"] == "video"
            else:
                first = audio.index(quoted[0])
                assert audio[first:first + len(quoted)] == quoted
        routed = route_chains(clip.timeline, clip.meta, clip.items)
        for it, was in zip(routed, clip.items):
            if it["question"].startswith(CHAINED) and it["question"] in by_question:
                asked += 1
                steps = prompt_and_target(was, "text")[1].split("\n</think>\n")[0].split("\n")
                got = prompt_and_target(it, "text")[1]
                assert got == by_question[it["question"]]
                assert got.split("\n")[0] == steps[0] and got.split("\n</think>")[0].split("\n")[-1] == steps[-1]
                assert it["reasoning"].rpartition("</think>\n")[2] == was["reasoning"].rpartition("</think>\n")[2]
            else:
                assert it == was
    assert asked > 0


def test_captions_keyed_by_their_second_are_what_window_rows_ask(data, keyed_narration):
    """With a narration whose prefix holds `{second}`, each caption opens with its chunk's start
    second; a window row asks a chunk by that second and answers with its caption, then what it holds."""
    from recipes.train.data import chunk_things, window_rows

    _, _, clips, _, _ = data
    clip = clips[0]
    for m in clip.meta:
        word = "heard" if m["modality"] == "audio" else "seen"
        assert chunk_caption(clip.timeline, m).startswith(f"({word} from second {round(m['t0'])}: ")
    windows = window_rows(clip.timeline, clip.meta)
    assert len(windows) == len(clip.meta)
    for (_, question, target), m in zip(windows, clip.meta):
        second = int(question.rsplit(": ", 1)[1].rstrip("?"))
        assert second == round(m["t0"]) and question.startswith("What is heard" if m["modality"] == "audio" else "What is on")
        assert target == chunk_caption(clip.timeline, m).rstrip() + "\n</think>\n" + ("; ".join(chunk_things(clip.timeline, m)) or "nothing")


def test_text_question_targets_score_full_marks_and_the_loss_reads_the_context(data):
    """Each row's target, answered as written, is scored right by `python -m app eval`'s scorer
    (so the rows and the scorer agree on the answer's form); and the rows' loss is the cross-entropy
    of the targets after the caption context: another timeline's context changes it."""
    import numpy as np

    from app.evaluate import score
    from recipes.train.data import lookup_rows
    from recipes.train.textqa import TimelineDraw, caption_context, text_loss, text_rows

    _, _, _, tok, _ = data
    draw = TimelineDraw()
    rng = np.random.default_rng(3)
    (tl, its), (other, _) = draw(rng, 20.0, 30.0, "a"), draw(rng, 20.0, 30.0, "b")
    rows = text_rows(tok, its, lookup_rows(tl))
    answers = ["<think>\n" + tok.decode(t[:-1]) for _, t in rows[:len(its)]]
    m = score([parse_item(it, "test") for it in its], answers)
    assert m["accuracy"] == 1.0 and m["no_choice"] == 0 and m["r1_iou_0.5"] == 1.0
    assert all(tok.decode(p).endswith("<think>\n") for p, _ in rows)
    _, decoder, _, _ = new_model(0, VOCAB_SIZE)
    with torch.no_grad():
        own, swapped = text_loss(decoder, tok, tl, rows), text_loss(decoder, tok, other, rows)
        ids = tok.encode(caption_context(tl))
        p, t = rows[0]
        seq = torch.tensor([ids + p + t])
        logits = decoder.lm_head(decoder_forward(decoder, decoder.new_state(), input_ids=seq, logits="none").hidden[0])
        first = F.cross_entropy(logits[len(ids) + len(p) - 1:-1].float(), seq[0, len(ids) + len(p):])
        alone = text_loss(decoder, tok, tl, rows[:1])
    assert torch.isclose(alone, first, rtol=1e-4)
    assert not torch.isclose(own, swapped, rtol=1e-6)


def test_text_questions_command_trains_and_logs_held_out_accuracy(data, tmp_path):
    """`python -m recipes.train text-questions --model DIR` continues a checkpoint's decoder on fresh
    timelines: an evaluation line at step 0 and at the end, with the scorer's figures over every
    held-out question, and the decoder's weights written."""
    _, _, _, _, tok_dir = data
    raw, decoder, vision, audio = new_model(0, VOCAB_SIZE)
    ckpt = tmp_path / "model"
    save_omni(ckpt, raw, decoder, vision, audio)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).write_bytes((tok_dir / name).read_bytes())
    out = subprocess.run([sys.executable, "-m", "recipes.train", "text-questions", "--out", str(tmp_path / "t"),
                          "--model", str(ckpt), "--steps", "2", "--every", "2", "--timelines", "1", "--held-out", "1",
                          "--chains", "3", "--windows", "3"],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "t" / "text_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2]
    assert rows[0]["loss"] is None and math.isfinite(rows[1]["loss"])
    assert rows[0]["n"] == rows[1]["n"] > 3 and 0.0 <= rows[1]["accuracy"] <= 1.0
    assert (tmp_path / "t" / "decoder.safetensors").is_file()
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 2
    bad = subprocess.run([sys.executable, "-m", "recipes.train", "text-questions", "--out", str(tmp_path / "u"),
                          "--model", str(ckpt), "--pattern", "M*"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and "--pattern builds a fresh decoder" in bad.stderr
