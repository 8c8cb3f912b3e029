"""CLME-CondConv: cross-layer multi-expert conditional convolution (A-SDM section 2.3).

    from slimdiff.modules import CondConvSettings, apply_condconv
    student = apply_condconv(student, teacher, CondConvSettings(experts=2, init="e2"))

A CondConv layer (Yang et al. 2019, "CondConv: conditionally parameterized convolutions")
holds E expert kernels and mixes them per example (METHODS.md section 4):

    y = conv(x, sum_i a_i(x) W_i) + sum_i a_i(x) b_i,    a(x) = sigmoid(R . GAP(x))   (B, E)

Two equivalent computations, for few experts (`impl`):
- "grouped": build each example's kernel, (B, E) @ (E, C_out*C_in*k*k), and run one conv
  with groups=B on the batch folded into channels (E x cheaper in conv FLOPs).
- "mixed": one conv with the E experts stacked on output channels (B, E*C_out, H, W), then
  the weighted sum over E (conv is linear in the kernel, so the result is the same).
Which is faster depends on the device; `DEFAULT_IMPL` is the one measured faster on this
project's machine (docs/bench/asdm_speed.md, `bench/bench_asdm_speed.py`).

Cross-layer initialisation (A-SDM: "the 3x3 convolution weights of each layer of the original
up-block3 are collected ... to assign each layer of the up-block3 of the student"): in a
student layer's CondConv, expert 0 is the conv the layer already has (inherited from its
teacher layer); experts 1.. are the same conv (conv1 or conv2) of the *other* teacher layers
of the same teacher block, in layer order, where their shape fits (an up block's first layer
reads more channels than its others); experts left over start random. Variant "e2" (seed
Table 1): expert 0 inherited, every other expert random. Interpretations, not published: the
expert order, the shape rule, and the routing's initial state a_i = 1/E (R = 0, bias =
logit(1/E); with one expert logit(0.99)), so a CondConv starts as the mean of its experts.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from slimdiff.unet import register_unit_type, replace_units, slim_view
from slimdiff.unet.structure import block_names_of, iter_units, name_to_path

IMPLS = ("grouped", "mixed")
DEFAULT_IMPL = "grouped"  # as fast as the plain conv on this CPU; "mixed" 2x slower with 2 experts (docs/bench/asdm_speed.md)
ROUTINGS = ("sigmoid", "constant")  # A-SDM's a(x) = sigmoid(R.GAP(x)) | a_i = 1/E (a plain mean; tests)
INITS = ("cross-layer", "e2")
UNIT_TYPE = "condconv_resnet"  # the unit type name in a U-Net's `blocks` (registered below, at import)


@dataclasses.dataclass
class CondConvSettings:
    experts: int = 2  # experts per 3x3 conv (A-SDM Table 1: "e2")
    # the compressed shallow blocks (A-SDM 2.3); None: down.0 and the last up block (up.3; bk-tiny: up.2)
    blocks: tuple[str, ...] | None = None
    init: str = "cross-layer"  # "cross-layer" (CLME) | "e2": expert 0 inherited, the others random
    routing: str = "sigmoid"  # "sigmoid" (A-SDM) | "constant" (a_i = 1/E)
    impl: str = DEFAULT_IMPL  # "grouped" | "mixed" (same result; see the module docstring)
    seed: int = 0  # random experts and routing

    def __post_init__(self):
        if isinstance(self.experts, bool) or not isinstance(self.experts, int) or self.experts < 1:
            raise ValueError(f"CondConv experts must be an integer >= 1, got {self.experts!r}")
        if self.blocks is not None:
            if isinstance(self.blocks, str) or not self.blocks:
                raise ValueError(f"CondConv blocks must be a non-empty list of block names or None, got {self.blocks!r}")
            self.blocks = tuple(self.blocks)
        for field, valid in (("init", INITS), ("routing", ROUTINGS), ("impl", IMPLS)):
            if getattr(self, field) not in valid:
                raise ValueError(f"CondConv {field}={getattr(self, field)!r} is invalid; valid: {list(valid)}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "blocks": list(self.blocks) if self.blocks else None}


class CondConv2d(nn.Module):
    """A conditionally parameterised conv: E experts `weight.i` (C_out, C_in, k, k) and `bias.i`.

    Same call as `nn.Conv2d`: (B, C_in, H, W) -> (B, C_out, H', W'). `routing` (nn.Linear
    C_in -> E) reads the global average of the input; `routing="constant"` has no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 num_experts: int = 2, routing: str = "sigmoid", impl: str = DEFAULT_IMPL):
        super().__init__()
        CondConvSettings(experts=num_experts, routing=routing, impl=impl)  # validates
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), (stride, stride), (padding, padding)
        self.num_experts, self.routing_kind, self.impl = num_experts, routing, impl
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.ParameterList(nn.Parameter(torch.empty(shape)) for _ in range(num_experts))
        self.bias = nn.ParameterList(nn.Parameter(torch.empty(out_channels)) for _ in range(num_experts))
        self.routing = nn.Linear(in_channels, num_experts) if routing == "sigmoid" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Experts as `nn.Conv2d` initialises a conv; routing R = 0 with a_i = 1/E (docstring)."""
        for w, b in zip(self.weight, self.bias):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            bound = 1 / math.sqrt(w[0].numel())
            nn.init.uniform_(b, -bound, bound)
        if self.routing is not None:
            nn.init.zeros_(self.routing.weight)
            p = 1 / self.num_experts if self.num_experts > 1 else 0.99
            nn.init.constant_(self.routing.bias, math.log(p / (1 - p)))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"experts={self.num_experts}, routing={self.routing_kind}, impl={self.impl}")

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """a(x): (B, E). sigmoid(R . GAP(x)), GAP over H, W; or the constant 1/E."""
        if self.routing is None:
            return x.new_full((x.shape[0], self.num_experts), 1.0 / self.num_experts)
        return torch.sigmoid(self.routing(x.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.routing_weights(x)  # (B, E)
        w = torch.stack(list(self.weight))  # (E, C_out, C_in, k, k)
        b = torch.stack(list(self.bias))  # (E, C_out)
        batch, c_out = x.shape[0], self.out_channels
        if self.impl == "grouped":
            # per-example kernels (B*C_out, C_in, k, k); the batch folded into channels, groups=B
            kernel = (a @ w.flatten(1)).view(batch * c_out, *w.shape[2:])
            y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), kernel, (a @ b).flatten(), self.stride, self.padding,
                         groups=batch)
            return y.view(batch, c_out, *y.shape[2:])
        # mixed: one conv over the stacked experts (B, E*C_out, H', W'), then sum_i a_i y_i
        y = F.conv2d(x, w.flatten(0, 1), b.flatten(), self.stride, self.padding)
        y = y.view(batch, self.num_experts, c_out, *y.shape[2:])
        return torch.einsum("be,bechw->bchw", a, y)


class CondConvResnetBlock2D(ResnetBlock2D):
    """diffusers' `ResnetBlock2D` whose two 3x3 convs (conv1, conv2) are `CondConv2d`s.

    Unit type `condconv_resnet` (role resnet): kwargs = ResnetBlock2D's plus `num_experts`,
    `routing`, `impl`. The 1x1 shortcut stays a plain conv.
    """

    def __init__(self, *, num_experts: int = 2, routing: str = "sigmoid", impl: str = DEFAULT_IMPL, **kwargs):
        super().__init__(**kwargs)
        for name in ("conv1", "conv2"):
            conv: nn.Conv2d = getattr(self, name)
            if conv.kernel_size != (3, 3) or conv.stride != (1, 1):
                raise ValueError(f"CondConvResnetBlock2D replaces 3x3 stride-1 convs; {name} is "
                                 f"{conv.kernel_size} stride {conv.stride}")
            setattr(self, name, CondConv2d(conv.in_channels, conv.out_channels, 3, 1, 1, num_experts, routing, impl))

    @property
    def signature_label(self) -> str:
        """Module label in latency-table keys (slimdiff.profile.signature): experts, impl, routing."""
        c = self.conv1
        return f"{type(self).__name__}(e{c.num_experts},{c.impl},{c.routing_kind})"


register_unit_type(UNIT_TYPE, CondConvResnetBlock2D, "resnet")  # CLME-CondConv resnets (A-SDM 2.3)


# ----------------------------------------------------------------------------- applying to a U-Net


def condconv_units(model: nn.Module, blocks: tuple[str, ...] | list[str] | None) -> list[str]:
    """The plain resnet units of `blocks` (None: the shallowest down and up blocks) in a slim U-Net."""
    if blocks is None:
        blocks = ("down.0", f"up.{len(model.config.blocks['up']) - 1}")
    valid = block_names_of(model.config.blocks)
    unknown = [b for b in blocks if b not in valid]
    if unknown:
        raise ValueError(f"CondConv blocks {unknown} do not exist in this U-Net; valid blocks: {valid}")
    names = [n for n, b, u in iter_units(model.config.blocks) if b in blocks and u["type"] == "resnet"]
    if not names:
        raise ValueError(f"blocks {list(blocks)} have no plain resnet unit to turn into CondConv")
    return names


def apply_condconv(student: nn.Module, teacher: nn.Module | None = None,
                   settings: CondConvSettings | None = None) -> nn.Module:
    """A copy of `student` whose resnets in `settings.blocks` are CondConv resnets, with experts
    initialised as the module docstring says; returns a `SlimUNet2DConditionModel`.

    `teacher`: the U-Net the student was pruned from (needed for init="cross-layer"). The
    model's `inheritance` records each expert's source tensor (in the teacher's naming), None
    for random experts and the routing.
    """
    settings = settings or CondConvSettings()
    if settings.init == "cross-layer" and teacher is None:
        raise ValueError("CondConv init 'cross-layer' takes experts from the teacher's layers: pass the teacher "
                         "(or use init='e2')")
    base = slim_view(student)
    names = condconv_units(base, settings.blocks)
    units = {n: u for n, _, u in iter_units(base.config.blocks) if n in names}
    extra = dict(num_experts=settings.experts, routing=settings.routing, impl=settings.impl)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = replace_units(base, {n: (UNIT_TYPE, {**units[n]["kwargs"], **extra}) for n in names})
    old = base.state_dict()
    pool = _teacher_convs(teacher) if settings.init == "cross-layer" else {}
    tensors = dict(model.state_dict())
    for name in names:
        path = name_to_path(name)
        for conv in ("conv1", "conv2"):
            own = f"{path}.{conv}"
            own_src = base.inheritance.get(f"{own}.weight")
            sources = [(f"{own}.weight", f"{own}.bias", old, base.inheritance)]
            sources += _cross_layer(pool, own_src, conv, old[f"{own}.weight"].shape, name)
            for i, (w_name, b_name, where, inherit) in enumerate(sources[:settings.experts]):
                for src, dst in ((w_name, f"{own}.weight.{i}"), (b_name, f"{own}.bias.{i}")):
                    tensors[dst] = where[src].detach().clone().to(tensors[dst].dtype)
                    model.inheritance[dst] = inherit.get(src, src)
    model.load_tensors(tensors, strict=True)
    return model


def _teacher_convs(teacher: nn.Module) -> dict:
    """Teacher block -> [(unit path, tensors, inheritance)] of its plain resnets, in layer order."""
    t = slim_view(teacher)
    tensors = t.state_dict()
    out: dict[str, list] = {}
    for name, block, unit in iter_units(t.config.blocks):
        if unit["type"] == "resnet" and ".layer." in name:
            out.setdefault(block, []).append((name, tensors, t.inheritance))
    return out


def _cross_layer(pool: dict, own_src: str | None, conv: str, shape: torch.Size, student_unit: str) -> list:
    """Same-shaped `conv` tensors of the other teacher layers of the block `own_src` came from."""
    if not pool:
        return []
    block = next((b for b, units in pool.items() for n, _, inh in units if inh.get(f"{n}.{conv}.weight") == own_src),
                 student_unit.rsplit(".layer.", 1)[0])
    out = []
    for name, tensors, inherit in pool.get(block, []):
        w = f"{name}.{conv}.weight"
        if inherit.get(w, w) != own_src and tensors[w].shape == shape:
            out.append((w, f"{name}.{conv}.bias", tensors, inherit))
    return out
