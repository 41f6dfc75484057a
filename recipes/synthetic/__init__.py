"""Synthetic long audio-video clips for training and evaluating the bundled default model.

`python -m recipes.synthetic generate --seed S --clips N --min-seconds A --max-seconds B --out DIR`
writes seeded, reproducible mp4 clips (H.264 + AAC, made with real encoders so they go through
the same decoding path as user files), a ground-truth timeline per clip, and an MMOU-format
DIR/questions.json whose items carry a canonical TA-CoT `reasoning` target.

timeline.py  what happens when (visual objects, spoken words, tones, noises, notes)
media.py     drawing frames, mixing audio, encoding the mp4
questions.py the MMOU-skill questions, options and reasoning
wordbank.py  the shipped espeak-ng word recordings (assets/wordbank/; render_wordbank.py re-renders)
generate.py  the data set, clip by clip
"""
