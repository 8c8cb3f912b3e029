"""Uniform channel pruning of a VAE decoder (SnapFusion's efficient decoder, METHODS.md section 5).

    student, info = prune_decoder(vae, VaePruneConfig(ratio=0.5))   # SD-1.5: 49.5M -> ~12.4M decoder params
    save_vae(student, "runs/vae-half", recipe=info)

What is pruned: every channel dimension inside `vae.decoder` (the residual stream of each
stage, each ResNet's hidden width, the mid-block attention's inner width), by the same ratio;
`conv_out`'s 3 image channels, the latent input, `post_quant_conv` and the whole encoder are
untouched, so the latent space is the teacher's. Torch-Pruning (`torch-pruning`, Fang et al.
2023, DepGraph) traces the decoder and gives the *groups* of coupled dimensions: one group is a
residual stream (the convs writing it, the ResNet shortcuts, the up-sampler conv reading it,
every GroupNorm on it, the attention's q/k/v inputs and output), a ResNet's hidden width
(conv1 out, norm2, conv2 in), or the attention's inner width (q/k/v out, to_out in). A group
is pruned as a whole, so every layer loses the same indices and the network stays well formed.

Choices slimdiff makes where the paper says only "50% uniform, L1-norm":
- Width: `C' = G * round((1 - ratio) * C / G)`, G = `norm_num_groups`, halves rounded up, for
  every dimension (the attention's inner width too, as diffusers' Decoder ties it to the stage
  width); `(1 - ratio) * C < G` is an error.
- GroupNorm groups are kept: each of the G groups of a normalised dimension keeps its own
  `C' / G` most important channels (so every kept channel is normalised with the channels it
  was normalised with before); the attention's inner width is chosen per head. Torch-
  Pruning's own channel grouping would instead drop the same in-group positions from every
  group (it averages importance across groups), which pairs unrelated channels; so slimdiff
  uses its dependency graph and pruning functions, and chooses the indices itself.
- Importance "l1" (default, Li et al. 2017, "Pruning Filters for Efficient ConvNets"): per
  channel, the L1 norm of the weights *producing* it, summed over the group's producing convs /
  linears. "group-l1": Torch-Pruning's group L1 (producers and consumers, averaged).
- Attention: scores are `q . k / sqrt(d)`; with d pruned to d' the pruned layer computes
  `/ sqrt(d')`, so to_q is multiplied by `sqrt(d' / d)`: the kept channels give exactly the
  logits they gave before.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from slimdiff.io import check_disjoint, is_pipeline_source
from slimdiff.unet import resolve_source
from slimdiff.vae.model import (SlimAutoencoderKL, decoder_params, decoder_widths, load_vae, moved_like,
                                save_pipeline_with_vae, save_vae, vae_dir)

IMPORTANCES = ("l1", "group-l1")


@dataclasses.dataclass
class VaePruneConfig:
    ratio: float = 0.5  # fraction of each decoder layer's channels removed (SnapFusion: 0.5)
    importance: str = "l1"  # "l1": Li et al. filter L1 of the producing layers | "group-l1": Torch-Pruning's

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"VaePruneConfig.ratio={self.ratio!r} is invalid: a fraction of channels in [0, 1)")
        self.ratio = float(self.ratio)
        if self.importance not in IMPORTANCES:
            raise ValueError(f"VaePruneConfig.importance={self.importance!r} is invalid: choose one of "
                             f"{list(IMPORTANCES)}")


def pruned_width(channels: int, groups: int, ratio: float, where: str = "a layer") -> int:
    """`C' = G * round((1 - ratio) * C / G)` (halves up); ValueError when `(1 - ratio) * C < G`."""
    target = (1.0 - ratio) * channels
    if target < groups:
        raise ValueError(f"ratio {ratio:g} leaves {target:g} of {where}'s {channels} channels, fewer than its "
                         f"{groups} GroupNorm groups; the largest ratio it allows is {1 - groups / channels:g}")
    return groups * int(math.floor(target / groups + 0.5))


def planned_widths(vae, ratio: float) -> tuple[int, ...]:
    """The pruned decoder's `block_out_channels` (errors name the stage that cannot be pruned)."""
    widths, groups = decoder_widths(vae), vae.config.norm_num_groups
    return tuple(pruned_width(c, groups, ratio, f"decoder stage {i} (block_out_channels[{i}])")
                 for i, c in enumerate(widths))


def prune_decoder(vae, config: VaePruneConfig | None = None) -> tuple[nn.Module, dict]:
    """A copy of `vae` with its decoder channel-pruned as `config` says, and the record of it
    (a numbered-step orchestration: 1 checks, 2 the dependency graph, 3 each group's kept channels,
    4 attention, 5 the student).

    Returns `(student, info)`: `student` a `SlimAutoencoderKL` (a plain `AutoencoderKL` when no
    width changed), in eval mode, on `vae`'s device; `info` (JSON-ready, for recipe.json) holds
    the settings, the widths, parameter counts and, per group of coupled channels, its layers
    (`name:out` / `name:in`: which dimension of the layer) and the kept indices.
    """
    try:
        import torch_pruning as tp
    except ModuleNotFoundError:
        raise ModuleNotFoundError("VAE decoder pruning needs Torch-Pruning: pip install 'slimdiff[vae]' "
                                  "(or pip install torch-pruning)") from None

    config = config or VaePruneConfig()
    # 1. checks: a VAE with a diffusers decoder; widths the ratio allows (before any tracing)
    if not hasattr(vae, "decoder") or not hasattr(vae, "config") or "block_out_channels" not in vae.config:
        raise ValueError(f"{type(vae).__name__} is not a VAE (an AutoencoderKL with a decoder): nothing to prune")
    new_widths = planned_widths(vae, config.ratio)
    groups = vae.config.norm_num_groups
    work = copy.deepcopy(vae).float()
    decoder = work.decoder
    names = {m: n for n, m in decoder.named_modules()}
    attention_of = {lin: m for m in decoder.modules() if hasattr(m, "to_q") and hasattr(m, "heads")
                    for lin in (m.to_q, m.to_k, m.to_v)}
    old_dims = {m: m.to_q.out_features // m.heads for m in set(attention_of.values())}

    # 2. Torch-Pruning's dependency graph of the decoder, traced on a small latent
    z = torch.zeros(1, vae.config.latent_channels, 4, 4, device=next(decoder.parameters()).device)
    with torch.enable_grad():
        decoder.requires_grad_(True)
        graph = tp.DependencyGraph().build_dependency(decoder, example_inputs=z)
    all_groups = [grp for grp in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear])
                  if not (grp[0].dep.target.module is decoder.conv_out  # the image channels
                          and graph.is_out_channel_pruning_fn(grp[0].dep.handler))]
    scores = [_importance(grp, config.importance, tp) for grp in all_groups]  # all before any pruning

    # 3. each group: C', its G, importance (C,), the lowest C/G - C'/G of each of the G groups
    record = []
    for group, imp in zip(all_groups, scores):
        root = group[0].dep
        layers = [(dep.target.module, dep.handler) for dep, _ in group]
        channels = len(group[0].idxs)
        # the width the decoder config gives every dimension; selection within g groups
        keep = pruned_width(channels, groups, config.ratio, names.get(root.target.module, "a layer"))
        g = _groups_of(layers, attention_of)
        if channels % g or keep % g:
            raise ValueError(f"{names.get(root.target.module)}: {channels} -> {keep} channels do not split "
                             f"into its {g} groups")
        size, keep_per = channels // g, keep // g
        drop = []
        for j in range(g):  # group j holds channels [j * size, (j + 1) * size)
            order = torch.argsort(imp[j * size:(j + 1) * size], stable=True)
            drop += (order[: size - keep_per] + j * size).tolist()
        drop = sorted(drop)
        kept = sorted(set(range(channels)) - set(drop))
        sides = {f"{names[m]}:{'out' if graph.is_out_channel_pruning_fn(fn) else 'in'}"
                 for m, fn in layers if m in names}
        record.append({"root": names.get(root.target.module, "?"), "channels": [channels, keep], "groups": g,
                       "layers": sorted(sides), "kept": kept})
        if drop:
            group.prune(drop)

    # 4. attention: keep each kept channel's logit (see the module docstring)
    state = work.state_dict()
    for attn, d in old_dims.items():
        d_new = attn.to_q.out_features // attn.heads
        if d_new != d:
            prefix = f"decoder.{names[attn]}.to_q."
            for key in (prefix + "weight", prefix + "bias"):
                if key in state:
                    state[key] = state[key] * math.sqrt(d_new / d)

    # 5. the student: diffusers' own modules built from the config, holding the pruned tensors
    cfg = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    widths = tuple(cfg["block_out_channels"])
    cls = SlimAutoencoderKL if new_widths != widths or isinstance(vae, SlimAutoencoderKL) else type(vae)
    if cls is SlimAutoencoderKL:
        cfg["decoder_block_out_channels"] = None if new_widths == widths else new_widths
    student = cls(**cfg)
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a traced group that does not match the uniform plan: a bug, say so
        raise RuntimeError(f"the pruned decoder does not match decoder widths {new_widths}: {e}") from None
    student = moved_like(student, vae).eval().requires_grad_(False)
    info = {
        "prune_vae": dataclasses.asdict(config),
        "method": "uniform channel pruning of the decoder (Torch-Pruning dependency groups, GroupNorm groups kept)",
        "decoder_block_out_channels": {"teacher": list(decoder_widths(vae)), "student": list(new_widths)},
        "decoder_params": {"teacher": decoder_params(vae), "student": decoder_params(student)},
        "groups": record,
    }
    return student, info


def _groups_of(layers, attention_of: dict) -> int:
    """G for a group: its GroupNorms' num_groups, or the heads of the attention whose q/k/v outputs it holds."""
    gns = {m.num_groups for m, _ in layers if isinstance(m, nn.GroupNorm)}
    if len(gns) > 1:
        raise ValueError(f"one group of coupled channels has GroupNorms with different num_groups {sorted(gns)}")
    if gns:
        return gns.pop()
    heads = {attention_of[m].heads for m, _ in layers if m in attention_of}
    return heads.pop() if len(heads) == 1 else 1


def _importance(group, kind: str, tp) -> torch.Tensor:
    """Per-channel importance (C,) of a group: see IMPORTANCES."""
    if kind == "group-l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)(group).cpu()
    out_fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
    scores = torch.zeros(len(group[0].idxs))
    for i, (dep, idxs) in enumerate(group):
        layer = dep.layer
        if dep.pruning_fn in out_fns and isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = layer.weight.detach()[idxs].flatten(1)  # (len(idxs), fan_in): the filters producing the channels
            scores.scatter_add_(0, torch.tensor(group[i].root_idxs), w.abs().sum(1).float().cpu())
    return scores


def prune_vae(source: str, out: str, config: VaePruneConfig | None = None) -> dict:
    """Load the VAE of `source` (anything `load_vae` takes), prune its decoder, write it.

    `out/`: the VAE (`save_vae`) and recipe.json (teacher, settings, widths, kept indices);
    for a pipeline source (toy, a pipeline directory) also `out/pipeline/`, the source pipeline
    with the pruned VAE, so `slimdiff generate out` / `slimdiff evaluate out` run it.
    Returns what was written and the parameter counts.
    """
    from slimdiff import __version__

    config = config or VaePruneConfig()
    root = resolve_source(source)[1] if is_pipeline_source(str(source)) else vae_dir(source)
    check_disjoint(out, {"MODEL": root})  # never written over, into or around the model it reads
    teacher = load_vae(source)
    student, info = prune_decoder(teacher, config)
    recipe = {"teacher": str(source), **info, "slimdiff_version": __version__}
    kind = save_vae(student, out, recipe=recipe)
    written = {"vae": str(out), "vae_class": kind, "recipe": f"{out}/recipe.json",
               "decoder_params": info["decoder_params"]}
    if is_pipeline_source(str(source)):
        written["pipeline"] = str(save_pipeline_with_vae(source, student, f"{out}/pipeline"))
    return written

