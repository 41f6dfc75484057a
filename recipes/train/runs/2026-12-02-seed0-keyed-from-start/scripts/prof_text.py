import sys, time, random
import numpy as np, torch
torch.set_num_threads(2)
from recipes.train import config, data
from fusion.stream import Narration
KEYED = {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}
config.NARRATION["prefix"] = KEYED
data.NARRATION = Narration.from_dict(config.NARRATION, "x")
from recipes.train import textqa
from recipes.train.textqa import TimelineDraw, chunk_layout, text_rows, text_loss, caption_context
from recipes.train.data import lookup_rows, chain_rows, window_rows, route_chains
from recipes.train.model import new_model
from recipes.train.run import load_trained
from engine.tokenizer import Tokenizer
tok = Tokenizer.from_dir("assets/default-model")
_, dec, vis, aud = new_model(0, 1536)
load_trained("assets/default-model", dec, vis, aud)
dec.train()
draw = TimelineDraw(); rng = np.random.default_rng(5); pick = random.Random(0)
Q, C, W, L = [int(x) for x in sys.argv[1:5]]
for rep in range(3):
    t0 = time.perf_counter(); loss = 0.0; ntok = 0; nrows = 0; ctx=0
    for k in range(2):
        tl, items = draw(rng, 20.0, 60.0, f"p{rep}{k}")
        layout = chunk_layout(tl)
        asked = route_chains(tl, layout, items)
        rows = text_rows(tok, pick.sample(asked, min(Q, len(asked))),
             pick.sample(lookup_rows(tl), min(L, len(lookup_rows(tl)))) +
             (pick.sample(chain_rows(tl, layout), min(C, len(chain_rows(tl, layout)))) if C else []) +
             (pick.sample(window_rows(tl, layout), min(W, len(window_rows(tl, layout)))) if W else []))
        ntok += sum(len(p)+len(t) for p,t in rows); nrows += len(rows); ctx += len(tok.encode(caption_context(tl)))
        loss = loss + text_loss(dec, tok, tl, rows) / 2
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    print(f"rows {nrows} row-tokens {ntok} ctx {ctx} fwd {t1-t0:.2f}s bwd {t2-t1:.2f}s")
if len(sys.argv) > 5:
    from torch.profiler import profile
    with profile() as p:
        loss = 0.0
        for k in range(2):
            tl, items = draw(rng, 20.0, 60.0, f"q{k}")
            layout = chunk_layout(tl); asked = route_chains(tl, layout, items)
            rows = text_rows(tok, pick.sample(asked, min(Q, len(asked))), pick.sample(lookup_rows(tl), min(L, len(lookup_rows(tl)))) + (pick.sample(chain_rows(tl, layout), min(C, len(chain_rows(tl, layout)))) if C else []) + (pick.sample(window_rows(tl, layout), min(W, len(window_rows(tl, layout)))) if W else []))
            loss = loss + text_loss(dec, tok, tl, rows) / 2
        loss.backward()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
