"""Training and ONNX export of the class-conditional defect-image diffusion models (imports torch).

The network is a small U-Net (residual blocks with GroupNorm and SiLU, no attention) that predicts
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 of x_t given the timestep t and the defect class (DDPM
training with the v target, cosine schedule; why v and not eps: ``genmodels.schedule``). Exported
graph: ``(x[B,1,H,W] float32, t[B] float32, label[B] int64) -> v[B,1,H,W] float32``; the weights are
the exponential moving average (EMA) of the trained ones.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from genmodels.data import defect_images
from genmodels.schedule import NUM_TRAIN_TIMESTEPS, cosine_alpha_bar
from genmodels.tiers import DEFECT_CLASSES, IMAGE_SIZE, ImageTier


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if c % 8 == 0 else 4, c)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, edim: int):
        super().__init__()
        self.n1, self.c1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(edim, cout)
        self.n2, self.c2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.e(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    def __init__(self, base: int, mults: tuple[int, ...], blocks: int, num_classes: int = len(DEFECT_CLASSES)):
        super().__init__()
        self.base = base
        edim = base * 4
        self.temb = nn.Sequential(nn.Linear(base, edim), nn.SiLU(), nn.Linear(edim, edim))
        self.cemb = nn.Embedding(num_classes, edim)
        self.inp = nn.Conv2d(1, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down, skips, ch = nn.ModuleList(), [base], base
        for i, c in enumerate(chans):
            for _ in range(blocks):
                self.down.append(ResBlock(ch, c, edim))
                ch = c
                skips.append(ch)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, edim), ResBlock(ch, ch, edim)])
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), c, edim))
                ch = c
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(_gn(ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1))

    def forward(self, x, t, label):
        half = self.base // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        a = t[:, None] * freqs[None, :]
        emb = self.temb(torch.cat([torch.sin(a), torch.cos(a)], dim=1)) + self.cemb(label)
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = m(h)
        return self.out(h)


def train_image_model(tier: ImageTier, out_path: Path, seed: int, steps: int, num_images: int,
                      log=print) -> dict:
    """Train ``tier`` for ``steps`` optimizer steps on ``num_images`` generated images, export the
    EMA weights to ``out_path`` (ONNX, one file) and return the provenance record."""
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    imgs, labels = defect_images(num_images, seed)
    data = torch.from_numpy(imgs[:, None] * 2.0 - 1.0)
    lab = torch.from_numpy(labels)
    abar = torch.from_numpy(cosine_alpha_bar()).float()
    model = UNet(tier.base, tier.mults, tier.blocks)
    ema = UNet(tier.base, tier.mults, tier.blocks)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tier.lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))))
    decay = min(0.999, 1 - 10.0 / max(steps, 10))
    losses = []
    for k in range(steps):
        idx = torch.from_numpy(rng.integers(0, num_images, tier.batch))
        x0, y = data[idx], lab[idx]
        t = torch.from_numpy(rng.integers(0, NUM_TRAIN_TIMESTEPS, tier.batch))
        eps = torch.randn_like(x0)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(xt, t.float(), y), a.sqrt() * eps - (1 - a).sqrt() * x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(decay, (1 + k) / (10 + k))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        losses.append(loss.item())
        if log and (k + 1) % max(1, steps // 5) == 0:
            log(f"  {tier.name}: step {k + 1}/{steps} loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
    ema.eval()
    params = sum(p.numel() for p in ema.parameters())
    config = {"schedule": "cosine", "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "image_size": IMAGE_SIZE,
              "classes": list(DEFECT_CLASSES), "pixel_range": [-1.0, 1.0], "prediction": "v",
              "base_channels": tier.base, "channel_mults": list(tier.mults), "blocks": tier.blocks,
              "parameters": params}
    x = torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    export_onnx(ema, (x, torch.tensor([500.0]), torch.tensor([0])), ["x", "t", "label"], ["v"],
                {"x": {0: "batch"}, "t": {0: "batch"}, "label": {0: "batch"}, "v": {0: "batch"}},
                out_path, tier.name, "image", config)
    return {"name": tier.name, "kind": "image", "steps": steps, "batch": tier.batch, "lr": tier.lr,
            "training_images": num_images, "final_loss": float(np.mean(losses[-50:])), "parameters": params,
            "wall_s": round(time.time() - t0, 1)}


def export_onnx(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dynamic: dict,
                out_path: Path, name: str, kind: str, config: dict) -> None:
    """torch.onnx.export (legacy exporter, opset 17, one file) plus the genmodels metadata."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the GRU's and the U-Net's shape checks
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(tmp))
    del model.metadata_props[:]
    for k, v in {"genmodels.name": name, "genmodels.kind": kind, "genmodels.config": json.dumps(config)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "genmodels"
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    tmp.unlink()
