"""VQ image tokenizer: convolutional encoder, L2-normalised low-dimensional codebook, decoder.

Reads top-down: ``VQConfig`` → ``ResBlock`` → ``Encoder`` / ``Decoder`` → ``Quantizer`` →
``VQModel``.

The quantizer follows LlamaGen: the encoder output is projected to a small ``code_dim`` (8),
both it and the codebook are L2-normalised, and the nearest code is the one with the largest
cosine similarity. Low-dimensional normalised codes keep the codebook well used; codes that
still go unused for ``restart_every`` training forwards are re-initialised from recent encoder
outputs (``VQModel.restart_dead_codes``), identically on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmgen.checkpoint import PretrainedMixin
from mmgen.config import Config, ConfigError


@dataclass(frozen=True)
class VQConfig(Config):
    """Shape and training knobs of the VQ tokenizer.

    The defaults fit the shapes world (72 × 72 → 9 × 9 codes at ×8): its images are drawn from
    about 750 distinct 8 × 8 patches (see ``ShapesConfig``), so a 768-code book can give each
    patch its own code. A narrow network (8 → 16 → 64 channels) is enough to draw them and
    trains fast on a CPU; EMA codebook updates and frequent dead-code restarts find the codes
    in a few hundred steps (measured: ``scripts/bench/vq_quality.py``).
    """

    image_size: int = 72  # side of the square input images (pixels)
    in_channels: int = 3  # RGB
    channels: int = 8  # width of the first (full-resolution) level
    channel_mult: tuple[int, ...] = (1, 2, 8)  # width multiplier per level; one ×2 downsampling per level
    num_res_blocks: int = 1  # residual blocks per level (encoder and decoder)
    mid_res_blocks: int = 1  # residual blocks at the lowest resolution, each side of the quantizer
    codebook_size: int = 768  # number of codes
    code_dim: int = 8  # dimension of the (L2-normalised) codes
    beta: float = 0.25  # commitment weight: pulls encoder outputs towards their codes
    codebook_weight: float = 1.0  # weight of the codebook loss (ignored with EMA updates)
    ema_decay: float = 0.95  # > 0: codebook follows an EMA of assigned encoder outputs instead of gradients
    restart_every: int = 50  # training forwards between dead-code restarts (0: never)
    restart_threshold: int = 1  # a code used fewer times than this over that window is dead
    restart_pool: int = 4096  # recent encoder outputs kept to draw restarted codes from
    recon_loss: Literal["l1", "l2"] = "l2"  # pixel reconstruction loss
    recon_weight: float = 1.0
    edge_weight: float = 0.5  # L1 between image gradients (finite differences): keeps edges/corners sharp

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        for name in ("image_size", "in_channels", "channels", "codebook_size", "code_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ConfigError(f"channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        if self.image_size % self.downsample:
            raise ConfigError(f"image_size={self.image_size} is not divisible by the downsampling {self.downsample}")
        if self.num_res_blocks < 0 or self.mid_res_blocks < 0:
            raise ConfigError("num_res_blocks and mid_res_blocks must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.restart_every < 0 or self.restart_threshold < 0 or self.restart_pool <= 0:
            raise ConfigError("restart_every/restart_threshold must be >= 0 and restart_pool > 0")

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return 2 ** len(self.channel_mult)

    @property
    def grid_size(self) -> int:
        """Codes along each side of the grid (h = w)."""
        return self.image_size // self.downsample


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, twice, plus a (1×1 projected where widths differ) skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Image (B, C, H, W) → features (B, code_dim, H/f, W/f), f = 2 ** len(channel_mult)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        ch = widths[0]
        for i, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, width))
                ch = width
            next_width = widths[min(i + 1, len(widths) - 1)]
            layers.append(nn.Conv2d(ch, next_width, 3, stride=2, padding=1))  # ×2 downsampling
            ch = next_width
        layers += [ResBlock(ch, ch) for _ in range(cfg.mid_res_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _group_norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest ×2 upsampling then a 3×3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Codes' vectors (B, code_dim, h, w) → image (B, C, h·f, w·f); mirror image of the encoder."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.code_dim, ch, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(ch, ch) for _ in range(cfg.mid_res_blocks)]
        for width in reversed(widths):
            layers.append(Upsample(ch, width))
            ch = width
            layers += [ResBlock(ch, ch) for _ in range(cfg.num_res_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _group_norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    """Nearest-code lookup by cosine similarity over L2-normalised codes.

    Holds the codebook (a parameter, or a buffer updated by EMA) and the bookkeeping for
    dead-code restarts: per-code usage counts over the current window and a ring buffer of
    recent normalised encoder outputs to restart from.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        init = F.normalize(torch.randn(cfg.codebook_size, cfg.code_dim), dim=-1)  # (K, D)
        if cfg.ema_decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(cfg.codebook_size), persistent=False)  # (K,)
            self.register_buffer("ema_sum", init.clone(), persistent=False)  # (K, D)
        else:
            self.codebook = nn.Parameter(init)
        # Training-time bookkeeping; not part of a checkpoint.
        self.register_buffer("usage", torch.zeros(cfg.codebook_size, dtype=torch.long), persistent=False)  # (K,)
        self.register_buffer("pool", torch.zeros(cfg.restart_pool, cfg.code_dim), persistent=False)  # (P, D)
        self.register_buffer("pool_filled", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("pool_pos", torch.zeros((), dtype=torch.long), persistent=False)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.float(), dim=-1)  # (K, D)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised vectors (N, D) → nearest code indices (N,)."""
        return (z @ self.normalized_codebook().t()).argmax(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) → (z_q with straight-through gradient, codes (B, h, w), commit, codebook loss)."""
        B, _, h, w = z.shape
        z_flat = F.normalize(rearrange(z.float(), "b d h w -> (b h w) d"), dim=-1)  # (N, D)
        codes = self.lookup(z_flat.detach())  # (N,)
        z_q = self.normalized_codebook()[codes]  # (N, D)
        commit = F.mse_loss(z_flat, z_q.detach())
        if self.cfg.ema_decay > 0:
            codebook_loss = torch.zeros((), device=z.device)
        else:
            codebook_loss = F.mse_loss(z_q, z_flat.detach())
        if self.training:
            self._record(z_flat.detach(), codes)
        z_q = z_flat + (z_q - z_flat).detach()  # straight-through estimator
        z_q = rearrange(z_q, "(b h w) d -> b d h w", b=B, h=h).contiguous()
        return z_q, codes.reshape(B, h, w), commit, codebook_loss

    @torch.no_grad()
    def _record(self, z_flat: torch.Tensor, codes: torch.Tensor) -> None:
        """Accumulate usage (summed over ranks), EMA statistics and the restart pool."""
        K = self.cfg.codebook_size
        counts = torch.bincount(codes, minlength=K)  # (K,)
        onehot_sum = None
        if self.cfg.ema_decay > 0:
            onehot_sum = torch.zeros_like(self.ema_sum).index_add_(0, codes, z_flat)  # (K, D)
        if _distributed():
            dist.all_reduce(counts)
            if onehot_sum is not None:
                dist.all_reduce(onehot_sum)
        self.usage += counts
        if onehot_sum is not None:
            decay = self.cfg.ema_decay
            self.ema_count.mul_(decay).add_(counts.float(), alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(onehot_sum, alpha=1 - decay)
            self.codebook.copy_(F.normalize(self.ema_sum, dim=-1))
        # Ring buffer of recent encoder outputs (this rank's; rank 0's are used for restarts).
        n = min(z_flat.shape[0], self.pool.shape[0])
        idx = (self.pool_pos + torch.arange(n, device=z_flat.device)) % self.pool.shape[0]
        self.pool[idx] = z_flat[-n:]
        self.pool_pos.copy_((self.pool_pos + n) % self.pool.shape[0])
        self.pool_filled.copy_(torch.clamp(self.pool_filled + n, max=self.pool.shape[0]))

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-initialise codes used fewer than ``restart_threshold`` times since the last call.

        New codes are drawn (with the default torch RNG) from the pool of recent encoder outputs.
        Under torch.distributed, rank 0 decides and its codebook is broadcast, so all ranks stay
        identical. Resets the usage window; returns the number of restarted codes.
        """
        dead = self.usage < self.cfg.restart_threshold  # (K,), identical on all ranks (all-reduced)
        n_dead = int(dead.sum())
        filled = int(self.pool_filled)
        if n_dead and filled:
            picks = torch.randint(0, filled, (n_dead,), device=self.pool.device)
            fresh = self.pool[picks]  # (n_dead, D)
            self.codebook.data[dead] = fresh.to(self.codebook.dtype)
            if self.cfg.ema_decay > 0:
                self.ema_sum[dead] = fresh
                self.ema_count[dead] = 1.0
        if _distributed() and n_dead:
            dist.broadcast(self.codebook.data, src=0)
            if self.cfg.ema_decay > 0:
                dist.broadcast(self.ema_sum, src=0)
                dist.broadcast(self.ema_count, src=0)
        self.usage.zero_()
        return n_dead if filled else 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class VQModel(PretrainedMixin, nn.Module):
    """VQ image tokenizer: images (B, 3, H, W) in [-1, 1] ⇄ codes (B, H/f, W/f)."""

    config_class = VQConfig  # save_pretrained / from_pretrained: config.json + model.safetensors, strict

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = Quantizer(config)
        self.decoder = Decoder(config)
        self.register_buffer("train_forwards", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_metrics: dict[str, float] = {}

    # ---- the one forward -------------------------------------------------------------

    def forward(self, images: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] → (reconstruction (B, C, H, W), scalar loss).

        In training mode every ``restart_every``-th forward restarts dead codes (after the
        statistics of this forward are recorded).
        """
        self._check_images(images)
        cfg = self.config
        z = self.encoder(images)  # (B, D, h, w)
        z_q, codes, commit, codebook_loss = self.quantizer(z)
        recon = self.decoder(z_q.to(z.dtype))  # (B, C, H, W)
        target = images.to(recon.dtype)
        if cfg.recon_loss == "l1":
            recon_loss = F.l1_loss(recon.float(), target.float())
        else:
            recon_loss = F.mse_loss(recon.float(), target.float())
        loss = cfg.recon_weight * recon_loss + cfg.beta * commit + cfg.codebook_weight * codebook_loss
        edge_loss = torch.zeros((), device=images.device)
        if cfg.edge_weight > 0:
            (rx, ry), (tx, ty) = _image_gradients(recon.float()), _image_gradients(target.float())
            edge_loss = 0.5 * (F.l1_loss(rx, tx) + F.l1_loss(ry, ty))
            loss = loss + cfg.edge_weight * edge_loss
        with torch.no_grad():
            mse = F.mse_loss(recon.float().clamp(-1, 1), target.float())
            self.last_metrics = {
                "loss": float(loss),
                "recon": float(recon_loss),
                "commit": float(commit),
                "codebook": float(codebook_loss),
                "edge": float(edge_loss),
                "psnr": float(psnr_from_mse(mse)),
                "usage": codebook_usage(codes, cfg.codebook_size),
                "perplexity": codebook_perplexity(codes, cfg.codebook_size),
            }
        if self.training and cfg.restart_every > 0:
            self.train_forwards += 1
            if int(self.train_forwards) % cfg.restart_every == 0:
                self.last_metrics["restarted"] = float(self.restart_dead_codes())
        return recon, loss

    def restart_dead_codes(self) -> int:
        """Re-initialise codes unused over the last window; see :meth:`Quantizer.restart_dead_codes`."""
        return self.quantizer.restart_dead_codes()

    # ---- tokenizer API ---------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] → codes (B, h, w) long."""
        self._check_images(images)
        z = self.encoder(images)  # (B, D, h, w)
        B, _, h, w = z.shape
        z_flat = F.normalize(rearrange(z.float(), "b d h w -> (b h w) d"), dim=-1)
        return self.quantizer.lookup(z_flat).reshape(B, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) long → images (B, C, H, W) clamped to [-1, 1]."""
        if codes.dim() != 3:
            raise ValueError(f"codes must have shape (B, h, w), got {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be integer, got {codes.dtype}")
        K = self.config.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must be in [0, {K}), got range [{int(codes.min())}, {int(codes.max())}]")
        z_q = rearrange(self.quantizer.normalized_codebook()[codes.long()], "b h w d -> b d h w")
        dtype = self.decoder.conv_in.weight.dtype
        return self.decoder(z_q.to(dtype)).clamp(-1, 1)

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != cfg.in_channels:
            raise ValueError(f"images must have shape (B, {cfg.in_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % cfg.downsample or images.shape[-2] % cfg.downsample:
            raise ValueError(f"image sides must be multiples of {cfg.downsample}, got {tuple(images.shape[-2:])}")

    # ---- checkpoints -----------------------------------------------------------------

# ---- metrics (pure functions) ----------------------------------------------------------


def psnr_from_mse(mse: torch.Tensor, value_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB for images whose values span ``value_range`` ([-1, 1] → 2)."""
    return 10 * torch.log10(value_range**2 / mse.clamp_min(1e-12))


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that occurs at least once in ``codes``."""
    return float(torch.unique(codes).numel()) / codebook_size


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code histogram: the effective number of codes in use."""
    probs = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    probs = probs / probs.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return float(torch.exp(entropy))
