"""The one catalogue of activation kinds: what each backend recognises as a ReLU-family site, and
what the rest of the tool may assume about it.

A site's ``op`` in the report is a catalogue key. The PyTorch backend matches ATen op names
(``torch_ops``; ``classify`` in ``backends.torch.sites`` also checks the bounds), the ONNX backend op
types (``onnx_ops``; ``backends.onnx.discover`` checks Clip's and Max's constants). Everything
else reads the properties: the gradient pass (``grad_mask``, ``torch_backward``), the rules
(``zero_below``), the fixer (``prunable``, ``leaky_form``) and the "what does reludoctor observe"
messages (``describe``). Adding an activation is one entry here plus, where its bounds need
checking, one branch in the backend's classifier (docs/architecture.md).

Where the two backends differ, the entry says so: LeakyReLU and PReLU are observed in ONNX
graphs (an exporter keeps them as LeakyRelu/PRelu nodes) but not yet in PyTorch models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Activation:
    op: str  # the report's name for it
    lower: float | None  # a unit "fires" where its pre-activation > lower (None: set per call)
    upper: float | None  # saturation bound (None: unbounded or set per call)
    torch_ops: tuple[str, ...] = ()  # ATen base names (in-place forms end in "_")
    torch_modules: tuple[str, ...] = ()  # nn module classes whose own call is this activation
    onnx_ops: tuple[str, ...] = ()  # ONNX op types in the default domain
    onnx_fused: tuple[str, ...] = ()  # ``activation`` attribute values of com.microsoft Fused* nodes
    grad_mask: bool = True  # its gradient is 0 where the unit does not fire (dead = no gradient)
    torch_backward: tuple[str, ...] = ()  # autograd node classes (name prefixes) of its backward
    zero_below: bool = True  # outputs exactly 0 below ``lower`` (a dead unit outputs 0)
    prunable: bool = True  # a dead unit outputs a constant (0 when lower is 0): removable with its weights
    leaky_form: bool = False  # ``fix --leaky`` can replace it (unbounded, zero below 0)
    label: str = ""  # how messages name it, in the backend's vocabulary


CATALOGUE: tuple[Activation, ...] = (
    Activation("relu", 0.0, None, torch_ops=("relu", "relu_"), torch_modules=("ReLU",),
               onnx_ops=("Relu", "Max"), onnx_fused=("Relu",),
               torch_backward=("ReluBackward",), leaky_form=True, label="relu"),
    Activation("relu6", 0.0, 6.0, torch_ops=("relu6", "relu6_"), torch_modules=("ReLU6",),
               onnx_ops=("Clip",), torch_backward=("HardtanhBackward",), label="relu6"),
    Activation("hardtanh", None, None, torch_ops=("hardtanh", "hardtanh_"), torch_modules=("Hardtanh",),
               torch_backward=("HardtanhBackward",), zero_below=False, label="hardtanh"),
    Activation("clamp", 0.0, None, torch_ops=("clamp", "clamp_", "clamp_min", "clamp_min_"),
               torch_backward=("ClampMinBackward", "ClampBackward"), leaky_form=True,
               label="clamp(min=0)"),
    Activation("threshold", 0.0, None, torch_ops=("threshold", "threshold_"),
               torch_modules=("Threshold",), torch_backward=("ThresholdBackward",),
               leaky_form=True, label="threshold"),
    Activation("clip", 0.0, None, onnx_ops=("Clip",), onnx_fused=("Clip",), label="Clip(min=0)"),
    Activation("leaky_relu", 0.0, None, onnx_ops=("LeakyRelu",), onnx_fused=("LeakyRelu",),
               grad_mask=False, torch_backward=("LeakyReluBackward",), zero_below=False,
               prunable=False, label="LeakyRelu"),
    Activation("prelu", 0.0, None, onnx_ops=("PRelu",), grad_mask=False,
               torch_backward=("PreluKernelBackward",), zero_below=False, prunable=False,
               label="PRelu"),
)

BY_OP: dict[str, Activation] = {a.op: a for a in CATALOGUE}


def get(op: str) -> Activation | None:
    """The catalogue entry of a site's ``op`` (None for an op no backend reports)."""
    return BY_OP.get(op)


def torch_ops() -> frozenset[str]:
    """Every ATen base name some activation claims (bounds are checked by ``backends.torch.sites``)."""
    return frozenset(name for a in CATALOGUE for name in a.torch_ops)


def torch_modules() -> tuple[str, ...]:
    return tuple(name for a in CATALOGUE for name in a.torch_modules)


def onnx_ops() -> frozenset[str]:
    """Every ONNX op type some activation claims (Clip and Max: when their constants say so)."""
    return frozenset(name for a in CATALOGUE for name in a.onnx_ops)


def onnx_fused() -> dict[str, str]:
    """Fused-node ``activation`` attribute -> the site's op (com.microsoft FusedConv and friends)."""
    return {name: a.op for a in CATALOGUE for name in a.onnx_fused}


def torch_backward() -> tuple[str, ...]:
    """Autograd node class-name prefixes of every activation's backward (the gradient pass)."""
    return tuple(dict.fromkeys(name for a in CATALOGUE for name in a.torch_backward))


def ops_where(prop: str) -> frozenset[str]:
    """The ops whose entry has ``prop`` true, e.g. ``ops_where("leaky_form")``."""
    return frozenset(a.op for a in CATALOGUE if getattr(a, prop))


def grad_masked(op: str) -> bool:
    """Whether the unit's gradient is 0 where it does not fire (unknown ops: yes)."""
    entry = BY_OP.get(op)
    return entry is None or entry.grad_mask


def describe(backend: str) -> str:
    """'reludoctor observes relu, relu6, ...' for a backend ("torch" or "onnx"), from the catalogue."""
    if backend == "onnx":
        names = ["Relu", "Clip(min=0)", "Max(x, 0)",
                 *(a.label for a in CATALOGUE if a.onnx_ops and a.op not in ("relu", "relu6", "clip"))]
    else:
        names = [a.label for a in CATALOGUE if a.torch_ops]
    return f"reludoctor observes {', '.join(names[:-1])} and {names[-1]}"


def listed_uses(found: Counter) -> str:
    """'its activations: silu x12, gelu' for a model refused before its data pass (prechecks)."""
    if not found:
        return "it has no activation op"
    listed = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in found.most_common(4))
    return f"its activations: {listed}"
