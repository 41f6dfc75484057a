"""Training the bundled default model on synthetic clips, on the CPU.

    python -m recipes.train run --out assets/default-model --seed 0    (make train-default)
    python -m recipes.train demo --out assets/demo                    (the demo clips)
    python -m recipes.train card --out assets/default-model           (its README.md, from metrics.json)
    python -m recipes.train probe --data .cache/train-data/seed0/train (what the towers' features carry)
    python -m recipes.train recall --pattern 'MEM*'                    (can a decoder config learn lookups?)
    python -m recipes.train narration --model DIR --data FOLDER        (how well a model captions the chunks)
    python -m recipes.train gold-captions --model DIR                  (its answers with perfect captions)
    python -m recipes.train reading --model DIR                        (does it name what each chunk holds?)
    python -m recipes.train text-questions --out DIR                  (the decoder on fresh gold-caption text)

config.py  the tiny Omni configuration and the run's settings
model.py   the model's parts, their seeded initialization, the checkpoint writer
data.py    clips, the towers' inputs cached per clip, the streaming layout, training items
train.py   the loop: shared media prefix, batched questions, aux-loss-free expert balancing
plots.py   loss curves drawn with PIL
run.py     a whole run: data, tokenizer, training, checkpoint, held-out evaluation; the demo clips
probe.py   linear probes: what the towers' features carry
recall.py  associative recall: how long a decoder configuration takes to learn to look things up
textqa.py  the questions on gold captions of fresh timelines, no media: the decoder's part alone
reading.py teacher-forced reading: the names in each chunk's caption, in the session and alone
card.py    the model card (README.md next to the weights), from the run's metrics
"""
