"""Training and ONNX export of the production-report generators (imports torch).

A word-piece GRU language model (``genmodels.tokens``): embedding -> GRU layers -> linear head,
trained with cross-entropy on windows of the report stream that start at a report boundary.
Exported as ONE decoding step with the recurrent state explicit: ``(token[B] int64,
state[L,B,H] float32) -> (logits[B,V] float32, next_state[L,B,H] float32)``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from genmodels.data import reports
from genmodels.tiers import TextTier
from genmodels.tokens import START, Vocab, split
from genmodels.train_image import export_onnx


class ReportGRU(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state):  # tokens [S, B], state [L, B, H]
        y, state = self.gru(self.emb(tokens), state)
        return self.head(y), state


class _Step(nn.Module):
    def __init__(self, m: ReportGRU):
        super().__init__()
        self.m = m

    def forward(self, token, state):
        logits, state = self.m(token[None, :], state)
        return logits[0], state


def train_text_model(tier: TextTier, out_path: Path, seed: int, steps: int, num_reports: int,
                     log=print) -> dict:
    """Train ``tier`` for ``steps`` steps on ``num_reports`` generated reports, export the one-step
    graph to ``out_path`` and return the provenance record."""
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 12]))
    texts = reports(num_reports, seed)
    vocab = Vocab.from_texts(texts)
    stream, starts = [], []
    for t in texts:
        starts.append(len(stream))
        stream += [vocab.index[START]] + [vocab.index[p] for p in split(t)]
    stream.append(vocab.index[START])
    stream = torch.tensor(stream, dtype=torch.int64)
    starts = np.array([s for s in starts if s + tier.seq_len + 1 <= len(stream)])
    model = ReportGRU(len(vocab), tier.emb, tier.hidden, tier.layers)
    opt = torch.optim.Adam(model.parameters(), lr=tier.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 + 0.9 * max(0.0, 1 - k / steps))
    losses = []
    for k in range(steps):
        s = rng.choice(starts, tier.batch)
        win = torch.stack([stream[i: i + tier.seq_len + 1] for i in s], dim=1)  # [S+1, B]
        h0 = torch.zeros(tier.layers, tier.batch, tier.hidden)
        logits, _ = model(win[:-1], h0)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), win[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (k + 1) % max(1, steps // 5) == 0:
            log(f"  {tier.name}: step {k + 1}/{steps} loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    config = {"vocab": vocab.tokens, "emb": tier.emb, "hidden": tier.hidden, "layers": tier.layers,
              "tokenizer": "word pieces with leading space, digits one by one (genmodels.tokens)",
              "parameters": params}
    export_onnx(_Step(model), (torch.tensor([0]), torch.zeros(tier.layers, 1, tier.hidden)),
                ["token", "state"], ["logits", "next_state"],
                {"token": {0: "batch"}, "state": {1: "batch"}, "logits": {0: "batch"}, "next_state": {1: "batch"}},
                out_path, tier.name, "text", config)
    return {"name": tier.name, "kind": "text", "steps": steps, "batch": tier.batch, "seq_len": tier.seq_len,
            "lr": tier.lr, "training_reports": num_reports, "vocab_size": len(vocab),
            "final_loss": float(np.mean(losses[-50:])), "parameters": params, "wall_s": round(time.time() - t0, 1)}
