"""`SlimUNet2DConditionModel`: the editable U-Net (DESIGN.md "One representation of a U-Net").

Its units are diffusers' own modules (`ResnetBlock2D`, `Transformer2DModel`, `Downsample2D`,
`Upsample2D`) built with exactly the kwargs diffusers uses, so an imported SD U-Net has the
same parameters and computes the same outputs. Its whole structure is the `blocks` entry of
its config (see `structure.py`), so `save_pretrained` / `from_pretrained` round-trip with no
extra code, and it can be the `unet` of a diffusers `StableDiffusionPipeline`.

    from slimdiff.unet import SlimUNet2DConditionModel
    slim = SlimUNet2DConditionModel.from_diffusers(unet)      # lossless import
    [u.name for u in slim.units()]                            # 'down.0.layer.0.resnet', ...
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.activations import get_activation
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from .access import num_params, with_inner_units
from .builtins import SD15_CONFIG
from .export import slim_to_diffusers_names
from .registry import build_unit, import_unit_types, unit_modules_of
from .structure import (
    UNetEditError,
    UnitInfo,
    base_from_diffusers_config,
    blocks_from_diffusers_config,
    consumed_skips,
    iter_units,
    layer_keys,
    name_to_path,
    role_of,
    validate,
)


class SlimUNet2DConditionModel(ModelMixin, AttentionMixin, ConfigMixin, PeftAdapterMixin):
    """An SD-1.x/2.x or SDXL conditional U-Net whose units can be removed, inserted or replaced.

    Config: the diffusers-like top-level settings (`in_channels`, `out_channels`, `sample_size`,
    `time_cond_proj_dim`, ...; `model_channels` = conv_in's output width = diffusers'
    `block_out_channels[0]`; `time_embed_dim` = the time embedding width) plus `blocks`, the
    structure description (`structure.py`). `blocks=None` gives SD-1.5's structure.
    `cross_attention_dim`: the text width D the model was made for (its attention units say
    which width each reads; this one stays when none is left). `unit_modules`: written by the
    model, the module that registers each non-built-in unit type it uses (`registry.py`).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock2D", "Transformer2DModel"]

    @register_to_config
    def __init__(
        self,
        blocks: dict | None = None,
        sample_size: int | None = 64,  # latent size the model was trained for (512px / 8)
        in_channels: int = 4,  # latent channels of the VAE
        out_channels: int = 4,
        model_channels: int = 320,  # conv_in output width (diffusers block_out_channels[0])
        time_embed_dim: int = 1280,  # 4 * model_channels in SD
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        time_cond_proj_dim: int | None = None,  # LCM-style guidance embedding (None in SD)
        timestep_post_act: str | None = None,
        time_embedding_act_fn: str | None = None,
        center_input_sample: bool = False,
        cross_attention_dim: int | None = None,  # text width D of encoder_hidden_states (B, L, D); None: unknown
        unit_modules: dict[str, str] | None = None,  # registered unit type -> its module (set by the model)
        addition_embed_type: str | None = None,  # None (SD-1.x/2.x) | "text_time" (SDXL's added conditioning)
        addition_time_embed_dim: int | None = None,  # sinusoid width per time id (256 in SDXL)
        projection_class_embeddings_input_dim: int | None = None,  # pooled text + 6 x time ids (2816 in SDXL)
    ):
        super().__init__()
        if blocks is None:
            blocks = blocks_from_diffusers_config(SD15_CONFIG)
            self.register_to_config(blocks=blocks)
        import_unit_types(blocks, unit_modules)  # a saved model's plug-in types register on import
        self.register_to_config(unit_modules=unit_modules_of(blocks) or None)
        self._traces = validate(blocks, model_channels)  # raises UNetEditError when ill formed
        self._skips_needed = consumed_skips(blocks)

        # 1. input conv and time embedding, as in UNet2DConditionModel (same parameter names)
        self.conv_in = nn.Conv2d(in_channels, model_channels, conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(model_channels, time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn else None
        if addition_embed_type == "text_time":  # SDXL: the same module names as UNet2DConditionModel
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif addition_embed_type is not None:
            raise UNetEditError(f"addition_embed_type={addition_embed_type!r} is not supported (None or 'text_time')")

        # 2. blocks -> layers -> units, and the skip wiring
        self._build_blocks(blocks)

        # 3. output
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, model_channels, eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(model_channels, out_channels, conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

        self.gradient_checkpointing = False
        # student tensor name -> teacher tensor name (None: new); a fresh model is its own origin
        self.inheritance: dict[str, str | None] = {k: k for k in self.state_dict()}
        # student unit name -> teacher unit name (set by edits; a fresh model: itself)
        self.unit_sources: dict[str, str] = {name: name for name, _, _ in iter_units(blocks)}

    def _build_blocks(self, blocks: dict) -> None:
        """Modules down[i]["layer"][j]["attn"], down[i]["downsample"], mid["resnet_0"], up[...];
        which skip each up-side resnet consumes and which skip points the down path stores."""

        def make_block(block: dict, sampler: str) -> nn.ModuleDict:
            layers = nn.ModuleList(
                nn.ModuleDict({k: build_unit(u) for k, u in zip(layer_keys(layer), layer)}) for layer in block["layers"]
            )
            mods = nn.ModuleDict({"layer": layers})
            if block.get(sampler):
                mods[sampler] = build_unit(block[sampler])
            return mods

        self.down = nn.ModuleList(make_block(b, "downsample") for b in blocks["down"])
        mid = blocks.get("mid")
        self.mid = nn.ModuleDict({k: build_unit(u) for k, u in zip(layer_keys(mid, True), mid)}) if mid else None
        self.up = nn.ModuleList(make_block(b, "upsample") for b in blocks["up"])
        # skip consumed by each up-side resnet: (block, layer, key) -> skip point name
        self._up_skips = {
            (i, j, k): u["skip"]
            for i, b in enumerate(blocks["up"]) for j, layer in enumerate(b["layers"])
            for k, u in zip(layer_keys(layer), layer) if u.get("skip")
        }

        # names of the skip points to store, per down layer / downsampler (None: not consumed)
        need = self._skips_needed
        self._down_store = [
            ([f"down.{i}.layer.{j}" if f"down.{i}.layer.{j}" in need else None for j in range(len(b["layers"]))],
             f"down.{i}.downsample" if f"down.{i}.downsample" in need else None)
            for i, b in enumerate(blocks["down"])
        ]

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_diffusers(cls, unet: nn.Module, clone: bool = True) -> "SlimUNet2DConditionModel":
        """Lossless import of a diffusers `UNet2DConditionModel` (same tensors, same outputs).

        `inheritance` maps each slim tensor to the diffusers tensor it was copied from.
        `clone=False` shares the tensors with `unet` (a view for read-only use, e.g. an edit
        that copies them again).
        """
        cfg = dict(unet.config)
        blocks = blocks_from_diffusers_config(cfg)
        model = cls.from_structure(blocks, **base_from_diffusers_config(cfg))
        names = slim_to_diffusers_names(blocks, list(model.state_dict()))
        source = unet.state_dict()
        model.load_tensors({k: source[names[k]] for k in model.state_dict()}, strict=True, clone=clone)
        model.inheritance = dict(names)
        return model.train(unet.training)

    @classmethod
    def from_structure(cls, blocks: dict, **base: Any) -> "SlimUNet2DConditionModel":
        """Build with empty (meta) weights; fill them with `load_tensors`."""
        with torch.device("meta"):
            return cls(blocks=blocks, **base)

    def load_tensors(self, tensors: dict[str, torch.Tensor], strict: bool = True, clone: bool = True) -> None:
        """Copy (`clone=False`: share) `tensors` (name -> tensor) into this model, which may
        hold meta weights; dtypes and devices come with the tensors."""
        own = self.state_dict()
        missing = [k for k in own if k not in tensors]
        unexpected = [k for k in tensors if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"tensor names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in tensors.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
        self.load_state_dict({k: v.detach().clone() if clone else v.detach() for k, v in tensors.items() if k in own},
                             strict=strict, assign=True)

    # ------------------------------------------------------------------ description

    @property
    def blocks(self) -> dict:
        """A deep copy of the structure description (safe to edit)."""
        return copy.deepcopy(self.config.blocks)

    def base_config(self) -> dict:
        """Top-level settings (every config entry but `blocks`)."""
        return {k: v for k, v in self.config.items() if k != "blocks" and not k.startswith("_")}

    def units(self, inner: bool = False) -> list[UnitInfo]:
        """Every unit in forward order, with channels, level, parameter count.

        `inner=True`: also the inner blocks of each Transformer unit of depth > 1 (kind
        "tblock", named `<unit>.tblock.k`, listed right after their unit; `structure.inner_units`).
        """
        infos = []
        for name, block, unit in iter_units(self.config.blocks):
            t = self._traces[name]
            module = self.get_submodule(name_to_path(name))
            role = role_of(unit)
            infos.append(UnitInfo(
                name=name, kind=role, block=block, in_channels=t.in_channels,
                out_channels=t.out_channels, level=t.level, params=num_params(module),
                cross_attention_dim=unit["kwargs"].get("cross_attention_dim") if role == "attn" else None,
                skip=unit.get("skip"), type=unit["type"],
            ))
        return with_inner_units(infos, self.config.blocks, lambda n: self.get_submodule(name_to_path(n))) if inner else infos

    # ------------------------------------------------------------------ forward

    def _text_time_embedding(self, added: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's added conditioning, as `UNet2DConditionModel.get_aug_embed` ("text_time"):
        text_embeds (B, P) pooled text, time_ids (B, 6) -> sinusoids (B, 6 * addition_time_embed_dim)
        -> concat (B, projection_class_embeddings_input_dim) -> add_embedding -> (B, time_embed_dim)."""
        for key in ("text_embeds", "time_ids"):
            if not added or key not in added:
                raise ValueError(f"this U-Net has addition_embed_type='text_time': added_cond_kwargs must hold "
                                 f"{key!r} (SDXL's pooled text embedding and size/crop time ids)")
        text_embeds, time_ids = added["text_embeds"], added["time_ids"]
        time_embeds = self.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
        return self.add_embedding(torch.concat([text_embeds, time_embeds], dim=-1).to(dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple:
        """Same signature and result as `UNet2DConditionModel.forward` (SD-1.x/2.x and SDXL subset).

        sample: (B, in_channels, H, W) noisy latents; encoder_hidden_states: (B, T, D) text.
        Not supported (raise): class labels, ControlNet / T2I-adapter residuals.
        A numbered-step orchestration (1. time embedding ... 5. output), as diffusers' own forward.
        """
        if class_labels is not None:
            raise ValueError("SlimUNet2DConditionModel has no class embedding; class_labels must be None")
        if any(r is not None for r in (down_block_additional_residuals, mid_block_additional_residual,
                                       down_intrablock_additional_residuals)):
            raise ValueError("SlimUNet2DConditionModel does not support ControlNet/adapter residuals")
        n_up = sum(1 for b in self.up if "upsample" in b)
        forward_upsample_size = any(s % 2**n_up != 0 for s in sample.shape[-2:])
        if attention_mask is not None:  # (B, T) keep-mask -> additive bias, as diffusers
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding: (B,) -> (B, model_channels) -> (B, time_embed_dim)
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type == "mps":
                dtype = torch.float32 if isinstance(timestep, float) else torch.int32
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
        if self.config.addition_embed_type == "text_time":
            emb = emb + self._text_time_embedding(added_cond_kwargs, emb.dtype)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        attn_kw = dict(encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs,
                       attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                       return_dict=False)
        checkpoint = torch.is_grad_enabled() and self.gradient_checkpointing

        def run(key: str, unit: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if key.startswith("attn"):
                return unit(h, **attn_kw)[0]
            if checkpoint:
                return self._gradient_checkpointing_func(unit, h, emb)
            return unit(h, emb)

        # 2. conv_in and down path; store only the skip points some up resnet consumes
        h = self.conv_in(sample)  # (B, model_channels, H, W)
        skips: dict[str, torch.Tensor] = {"conv_in": h} if "conv_in" in self._skips_needed else {}
        sizes = [h.shape[2:]]  # spatial size per level, for odd sizes (diffusers' upsample_size)
        for block, (layer_points, sampler_point) in zip(self.down, self._down_store):
            for layer, point in zip(block["layer"], layer_points):
                for key, unit in layer.items():
                    h = run(key, unit, h)
                if point is not None:
                    skips[point] = h
            if "downsample" in block:
                h = block["downsample"](h)  # (B, C, H/2, W/2)
                sizes.append(h.shape[2:])
                if sampler_point is not None:
                    skips[sampler_point] = h

        # 3. mid block
        if self.mid is not None:
            for key, unit in self.mid.items():
                h = run(key, unit, h)

        # 4. up path: resnets concatenate their skip on channels
        level = len(sizes) - 1
        for i, block in enumerate(self.up):
            for j, layer in enumerate(block["layer"]):
                for key, unit in layer.items():
                    skip = self._up_skips.get((i, j, key))
                    if skip is not None:
                        h = torch.cat([h, skips[skip]], dim=1)
                    h = run(key, unit, h)
            if "upsample" in block:
                level -= 1
                size = sizes[level] if forward_upsample_size and level < len(sizes) else None
                h = block["upsample"](h, size)

        # 5. output
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        if not return_dict:
            return (h,)
        return UNet2DConditionOutput(sample=h)
